"""One forecaster for many series, with prediction intervals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmodels.backbones import Backbone
from seqmodels.errors import InvalidInputError
from seqmodels.metrics import ForecastMetrics, gaussian_crps, pinball
from seqmodels.preprocessing import PanelTransform
from seqmodels.tasks.base import PreprocessedTask


class Forecast(NamedTuple):
    """A batch of forecasts in the series' own units: ``point (B, H)`` (direct mode: the median, which
    for a Gaussian is also the mean; recursive mode: the path fed its own means), ``quantiles (B, H,
    Q)`` at the model's levels, and for a direct Gaussian model on unlogged values ``mean``/``std``."""

    point: Tensor
    quantiles: Tensor
    mean: Tensor | None = None
    std: Tensor | None = None

    def times(self, factors: Tensor | None) -> Forecast:
        """The forecasts multiplied by ``factors (B, H)`` (seasonal factors; None: unchanged)."""
        if factors is None:
            return self
        return Forecast(self.point * factors, self.quantiles * factors.unsqueeze(-1),
                        None if self.mean is None else self.mean * factors,
                        None if self.std is None else self.std * factors)

    def to(self, device: torch.device) -> Forecast:
        return Forecast(*(None if t is None else t.to(device) for t in self))


class GlobalForecaster(PreprocessedTask):
    """A recurrent forecaster trained across many series at once (DeepAR's recipe), giving
    probabilistic forecasts of the next ``horizon`` steps.

    Each window is divided by its own scale (the mean absolute value of its observed past; logged
    too with ``data.log``, see :class:`~seqmodels.preprocessing.PanelTransform`), so series of any
    level share one model. Per
    step the backbone reads the scaled value, whether it was observed (series that start late are
    padded), past-observed covariates, and known-future covariates (calendar features included).

    Modes:

    * ``direct``: the backbone reads the context; its last state, with the known-future covariates
      of the whole horizon, gives every horizon step at once (no errors fed back).
    * ``recursive``: the backbone predicts one step, trained with the true previous values (teacher
      forcing) and rolled forward at forecast time on its own forecasts: the mean path is the point
      forecast, ``num_paths`` sampled paths give the intervals. Gaussian only, and no past-observed
      covariates (they are unknown past the origin).

    ``highway`` (direct mode) adds a linear map of the normalised context to the output, as LSTNet
    does: the recurrent part then learns what a linear autoregression misses (measured on M3 in
    ``docs/results.md``).

    Likelihoods: ``gaussian`` (negative log-likelihood; intervals from the normal quantiles) or
    ``quantile`` (pinball loss at ``quantiles``, made monotone by construction). ``quantiles`` are
    also the levels that ``predict`` writes and that the interval metrics use (lowest to highest:
    10% to 90% is the 80% interval). Point forecasts are the median.

    Metrics per split: ``loss``, ``mae``, ``rmse``, ``mape``, ``smape``, ``mase``, ``coverage``,
    ``wql`` and for a direct Gaussian ``crps`` (see :mod:`seqmodels.metrics`).

    Args:
        backbone: builds the recurrent backbone from its input size.
        window, horizon: context and forecast steps; linked from the data module by the CLI.
        past_features, future_features: covariate counts; linked from the data module.
    """

    preprocessor: PanelTransform | None
    prediction_file = "forecast.csv"

    def __init__(self, backbone: Callable[[int], Backbone], window: int = 36, horizon: int = 18,
                 likelihood: Literal["gaussian", "quantile"] = "quantile",
                 quantiles: Sequence[float] = (0.1, 0.5, 0.9), mode: Literal["direct", "recursive"] = "direct",
                 highway: bool = False, past_features: int = 0, future_features: int = 0,
                 num_paths: int = 200) -> None:
        super().__init__()
        levels = [float(q) for q in quantiles]
        if not levels or levels != sorted(set(levels)) or not all(0 < q < 1 for q in levels):
            raise InvalidInputError(f"quantiles must be distinct levels in (0, 1), ascending; got {list(quantiles)}.")
        if 0.5 not in levels:
            raise InvalidInputError(f"quantiles must include 0.5, the point forecast; got {levels}.")
        if likelihood not in ("gaussian", "quantile"):
            raise InvalidInputError(f"likelihood must be 'gaussian' or 'quantile', got {likelihood!r}.")
        if mode not in ("direct", "recursive"):
            raise InvalidInputError(f"mode must be 'direct' or 'recursive', got {mode!r}.")
        if mode == "recursive" and likelihood != "gaussian":
            raise InvalidInputError("mode: recursive feeds forecasts back as inputs and samples paths for its "
                                    "intervals, which needs likelihood: gaussian. Use mode: direct for quantiles.")
        if mode == "recursive" and highway:
            raise InvalidInputError("highway: true maps the context to the whole horizon, which is mode: direct.")
        if mode == "recursive" and past_features:
            raise InvalidInputError("mode: recursive cannot use past-observed covariates (they are unknown past the "
                                    "forecast origin); declare them known-future, or use mode: direct.")
        for name, value in (("window", window), ("horizon", horizon), ("num_paths", num_paths)):
            if value < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {value}.")
        self.save_hyperparameters()
        self.register_buffer("levels", torch.tensor(levels), persistent=False)
        self.backbone = backbone(2 + past_features + future_features)
        params = 2 if likelihood == "gaussian" else len(levels)
        steps = horizon if mode == "direct" else 1
        future_inputs = future_features * horizon if mode == "direct" else 0
        self.head = nn.Linear(self.backbone.output_size + future_inputs, steps * params)
        self.highway = nn.Linear(window, steps * params) if highway else None
        self.val_metrics, self.test_metrics = ForecastMetrics(), ForecastMetrics()

    def check_preprocessor(self, preprocessor: PanelTransform) -> None:
        if not isinstance(preprocessor, PanelTransform):
            raise InvalidInputError(f"A GlobalForecaster reads panels of series: it needs a PanelTransform, got "
                                    f"{type(preprocessor).__name__}. Pair it with datamodules.PanelDataModule.")
        sizes = (preprocessor.past_features, preprocessor.future_features)
        if sizes != (self.hparams.past_features, self.hparams.future_features):
            raise InvalidInputError(f"The data has {sizes[0]} past and {sizes[1]} future covariates, the model was "
                                    f"built for {self.hparams.past_features} and {self.hparams.future_features}.")

    # -- the distribution ----------------------------------------------------------------------

    def _distribution(self, raw: Tensor) -> tuple[Tensor, ...]:
        return distribution(raw, self.hparams.likelihood, self.levels)

    def _loss(self, parameters: tuple[Tensor, ...], target: Tensor) -> Tensor:
        if self.hparams.likelihood == "gaussian":
            mean, std = parameters
            return F.gaussian_nll_loss(mean, target, std.pow(2), full=True)
        return pinball(target, parameters[0], self.levels).mean()

    def _to_quantiles(self, parameters: tuple[Tensor, ...]) -> Tensor:
        return to_quantiles(parameters, self.hparams.likelihood, self.levels)

    # -- the model -------------------------------------------------------------------------------

    @property
    def transform(self) -> PanelTransform:
        return self.require_preprocessor()

    def _inputs(self, batch: dict[str, Tensor], scale: Tensor) -> Tensor:
        return model_inputs(batch, scale, self.hparams.mode, self.transform)

    def _direct(self, batch: dict[str, Tensor], scale: Tensor) -> tuple[Tensor, ...]:
        inputs = self._inputs(batch, scale)
        outputs, _ = self.backbone(inputs)
        return self._distribution(direct_head(self.head, self.highway, outputs, inputs, batch["future"]))

    def _teacher_forced(self, batch: dict[str, Tensor], scale: Tensor) -> tuple[Tensor, ...]:
        """Recursive mode's training pass: one-step predictions of every target, each from the true past."""
        window, horizon = batch["context"].shape[1], batch["target"].shape[1]
        known = self.transform.normalise(batch["target"][:, :-1], scale)
        inputs = torch.cat([
            self._inputs(batch, scale),
            torch.cat([known.unsqueeze(-1), torch.ones_like(known).unsqueeze(-1),
                       batch["future"][:, window + 1 : window + horizon]], -1),
        ], 1)
        outputs, _ = self.backbone(inputs)
        raw = self.head(outputs[:, window - 1 :])
        return self._distribution(raw.flatten(1))

    def _rollout(self, batch: dict[str, Tensor], scale: Tensor, sample: bool) -> tuple[Tensor, Tensor]:
        """Recursive forecast of every horizon step, fed its own mean (or, ``sample``, a draw):
        returns the means and standard deviations of each step's one-step distribution ``(B, H)``."""
        window, horizon = batch["context"].shape[1], self.hparams.horizon
        outputs, state = self.backbone(self._inputs(batch, scale))
        means, stds = [], []
        for k in range(horizon):
            mean, std = self._distribution(self.head(outputs[:, -1]))
            mean, std = mean[:, 0], std[:, 0]
            means.append(mean)
            stds.append(std)
            if k + 1 == horizon:
                break
            value = mean + std * torch.randn_like(mean) if sample else mean
            step = torch.cat([value[:, None], torch.ones_like(value)[:, None], batch["future"][:, window + k + 1]], -1)
            outputs, state = self.backbone(step.unsqueeze(1), state)
        return torch.stack(means, 1), torch.stack(stds, 1)

    def forecast(self, batch: dict[str, Tensor]) -> Forecast:
        """The batch's forecasts in the series' units (``batch`` as the panel data module gives it, on
        any device; the forecasts come back on the batch's)."""
        device = batch["context"].device
        batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        batch, season = PanelTransform.seasonally_adjusted(batch)
        return self._adjusted_forecast(batch).times(season).to(device)

    def _adjusted_forecast(self, batch: dict[str, Tensor]) -> Forecast:
        scale = PanelTransform.scale(batch["context"], batch["observed"])
        if self.hparams.mode == "direct":
            return self._direct_forecast(self._direct(batch, scale), scale)
        mean, _ = self._rollout(batch, scale, sample=False)
        rows, drawn, left = len(batch["context"]), [], self.hparams.num_paths
        while left:  # paths drawn in groups of at most 50 per series, to bound memory
            count = min(50, left)
            part = {k: v.repeat_interleave(count, 0) for k, v in batch.items() if isinstance(v, Tensor)}
            sampled_mean, sampled_std = self._rollout(part, scale.repeat_interleave(count, 0), sample=True)
            draws = sampled_mean + sampled_std * torch.randn_like(sampled_mean)
            drawn.append(draws.view(rows, count, -1))
            left -= count
        samples = torch.cat(drawn, 1)
        quantiles = torch.quantile(samples, self.levels, dim=1).permute(1, 2, 0)
        return Forecast(self.transform.denormalise(mean, scale), self.transform.denormalise(quantiles, scale.unsqueeze(-1)))

    def _direct_forecast(self, parameters: tuple[Tensor, ...], scale: Tensor) -> Forecast:
        quantiles = self.transform.denormalise(self._to_quantiles(parameters), scale.unsqueeze(-1))
        if self.hparams.likelihood == "gaussian" and not self.transform.log:
            mean, std = parameters
            return Forecast(mean * scale, quantiles, mean * scale, std * scale)
        return Forecast(quantiles[..., self.levels.tolist().index(0.5)], quantiles)

    # -- steps -------------------------------------------------------------------------------------

    def _training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        batch, _ = PanelTransform.seasonally_adjusted(batch)
        return self._adjusted_loss(batch)

    def _adjusted_loss(self, batch: dict[str, Tensor]) -> Tensor:
        scale = PanelTransform.scale(batch["context"], batch["observed"])
        target = self.transform.normalise(batch["target"], scale)
        if self.hparams.mode == "direct":
            return self._loss(self._direct(batch, scale), target)
        return self._loss(self._teacher_forced(batch, scale), target)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], split: str, metrics: ForecastMetrics) -> None:
        adjusted, season = PanelTransform.seasonally_adjusted(batch)
        if self.hparams.mode == "direct":  # one pass gives both the loss and the forecast
            scale = PanelTransform.scale(adjusted["context"], adjusted["observed"])
            parameters = self._direct(adjusted, scale)
            loss = self._loss(parameters, self.transform.normalise(adjusted["target"], scale))
            forecast = self._direct_forecast(parameters, scale).times(season)
        else:
            loss, forecast = self._adjusted_loss(adjusted), self._adjusted_forecast(adjusted).times(season)
        self.log(f"{split}/loss", loss, batch_size=len(batch["target"]), sync_dist=True)
        update_metrics(metrics, batch, forecast, self.levels)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def _log_metrics(self, split: str, metrics: ForecastMetrics) -> None:
        log_metrics(self, split, metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """One record per series and step: ``id``, ``date``, ``forecast`` (the point forecast, see
        :class:`Forecast`) and the quantiles as ``p10``, ``p50``, ``p90``, ... ."""
        return forecast_records(batch, self.forecast(batch), self.levels)


def distribution(raw: Tensor, likelihood: str, levels: Tensor) -> tuple[Tensor, ...]:
    """Head output ``(B, steps * P)`` -> Gaussian ``(mean, std)`` or monotone ``quantiles``, each
    ``(B, steps[, Q])``, in scaled units."""
    raw = raw.float().view(raw.shape[0], -1, 2 if likelihood == "gaussian" else len(levels))
    if likelihood == "gaussian":
        return raw[..., 0], F.softplus(raw[..., 1]) + 1e-3
    # The lowest level, then positive increments: quantiles can never cross.
    increments = torch.cat([raw[..., :1], F.softplus(raw[..., 1:])], -1)
    return (increments.cumsum(-1),)


def to_quantiles(parameters: tuple[Tensor, ...], likelihood: str, levels: Tensor) -> Tensor:
    if likelihood == "gaussian":
        mean, std = parameters
        z = torch.distributions.Normal(0.0, 1.0).icdf(levels)
        return mean.unsqueeze(-1) + std.unsqueeze(-1) * z
    return parameters[0]


def direct_head(head: nn.Linear, highway: nn.Linear | None, outputs: Tensor, inputs: Tensor,
                future: Tensor) -> Tensor:
    """Direct mode's output: from the backbone's last step and the horizon's known-future inputs,
    plus the highway's linear map of the normalised context values (``inputs[..., 0]``)."""
    window = inputs.shape[1]
    raw = head(torch.cat([outputs[:, -1], future[:, window:].flatten(1)], -1))
    return raw if highway is None else raw + highway(inputs[..., 0])


def model_inputs(batch: dict[str, Tensor], scale: Tensor, mode: str, transform: PanelTransform) -> Tensor:
    """``(B, window, 2 + P + F)``: normalised value, observed flag, covariates; in recursive mode the
    known-future covariates are those of the step being predicted (one ahead)."""
    window = batch["context"].shape[1]
    shift = 1 if mode == "recursive" else 0
    values = transform.normalise(batch["context"], scale, batch["observed"])
    return torch.cat([values.unsqueeze(-1), batch["observed"].unsqueeze(-1), batch["past"],
                      batch["future"][:, shift : window + shift]], -1)


def log_metrics(module: L.LightningModule, split: str, metrics: ForecastMetrics) -> None:
    """Log an epoch's forecast metrics as ``<split>/<name>`` and start the next epoch afresh."""
    if metrics.update_count:
        values = metrics.compute()
        module.log_dict({f"{split}/{name}": value for name, value in values.items()}, prog_bar=split == "val")
    metrics.reset()


def forecast_records(batch: dict[str, Any], forecast: Forecast, levels: Tensor) -> list[dict[str, Any]]:
    """``predict``'s records of a batch's forecasts: one per series and step."""
    names = [f"p{round(100 * q, 2):g}" for q in levels.tolist()]
    records = []
    for row, (name, dates) in enumerate(zip(batch["names"], batch["dates"])):
        for step, date in enumerate(dates):
            record = {"id": name, "date": date, "forecast": round(float(forecast.point[row, step]), 4)}
            record.update({n: round(float(v), 4) for n, v in zip(names, forecast.quantiles[row, step])})
            records.append(record)
    return records


def update_metrics(metrics: ForecastMetrics, batch: dict[str, Tensor], forecast: Forecast, levels: Tensor) -> None:
    """Add a batch's forecasts to ``metrics`` (with the Gaussian CRPS where the forecast has one)."""
    crps = gaussian_crps(batch["target"], forecast.mean, forecast.std) if forecast.mean is not None else None
    metrics.update(batch["target"], forecast.point, forecast.quantiles, levels, batch["scale"], crps)


@torch.no_grad()
def evaluate(model: GlobalForecaster, batches) -> dict[str, float]:
    """The metrics of a model's forecasts over ``batches`` (e.g. one backtest fold)."""
    metrics = ForecastMetrics()
    model.eval()
    for batch in batches:
        update_metrics(metrics, batch, model.forecast(batch), model.levels)
    return {name: float(value) for name, value in metrics.compute().items()}

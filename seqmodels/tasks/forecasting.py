"""Forecasting a univariate series from windows of its past."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from seqmodels.backbones import Backbone
from seqmodels.errors import InvalidInputError
from seqmodels.tasks.outputs import output_file


class Forecaster(L.LightningModule):
    """Predicts the next ``horizon`` values of a series from a window of its raw past.

    The model owns its transform, so a checkpoint alone maps raw values to raw forecasts:
    an optional log, differencing at the given ``differences`` lags (``[1, 12]``: the trend
    and the yearly season of a monthly series), then standardisation with the mean and
    standard deviation of the *training* part only, fitted in :meth:`setup` and kept in
    buffers. The loss is the MSE of the standardised values; metrics are in the series' own
    units.

    Shapes: ``forward`` maps transformed windows ``(batch, steps)`` to ``(batch, horizon)``;
    :meth:`predict_next` and :meth:`forecast` take and return raw values.

    Args:
        backbone: builds the recurrent backbone from its input size (1).
        horizon: values predicted per window (1 when differencing).
        log: model ``log(values)``; the series must then be positive.
        differences: lags to difference at, in order.
        lr: Adam's learning rate, used when the config gives no ``optimizer``.
        predict_steps: how far ``predict`` forecasts past the end of the series.
    """

    def __init__(self, backbone: Callable[[int], Backbone], horizon: int = 1, log: bool = False,
                 differences: list[int] | None = None, lr: float = 1e-3, predict_steps: int = 12) -> None:
        super().__init__()
        differences = list(differences or [])
        if horizon < 1:
            raise InvalidInputError(f"horizon must be >= 1, got {horizon}.")
        if any(lag < 1 for lag in differences):
            raise InvalidInputError(f"differences must be positive lags, got {differences}.")
        if differences and horizon != 1:
            raise InvalidInputError(
                f"Differencing ({differences}) forecasts one step at a time; set horizon=1 "
                f"(got {horizon}) and use forecast() for several steps."
            )
        self.save_hyperparameters()
        self.output_path: str | None = None  # where predict writes; the CLI's --output
        self.differences = differences
        self.backbone = backbone(1)
        self.head = nn.Linear(self.backbone.output_size, horizon)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.register_buffer("context", torch.zeros((), dtype=torch.long))  # raw values per window
        self.val_rmse, self.test_rmse = MeanSquaredError(squared=False), MeanSquaredError(squared=False)
        self.val_mae, self.test_mae = MeanAbsoluteError(), MeanAbsoluteError()
        self._test_predictions: list[Tensor] = []

    # -- transform ------------------------------------------------------------------------

    def _levels(self, raw: Tensor) -> list[Tensor]:
        """The series after the log and after each differencing: ``[z, diff_1 z, ...]``."""
        z = raw.log() if self.hparams.log else raw
        levels = [z]
        for lag in self.differences:
            z = z[..., lag:] - z[..., :-lag]
            levels.append(z)
        return levels

    def transform(self, raw: Tensor) -> Tensor:
        """Raw ``(..., time)`` -> standardised ``(..., time - sum(differences))``."""
        return (self._levels(raw)[-1] - self.mean) / self.std

    def fit_transform(self, train_values: Tensor, all_values: Tensor | None = None, context: int = 0) -> None:
        """Fit the standardisation on the training values (and check the series suits the log)."""
        if self.hparams.log:
            values = train_values if all_values is None else all_values
            bad = (values <= 0).nonzero().flatten().tolist()
            if bad:
                raise InvalidInputError(
                    f"log=True needs positive values, but the series has {len(bad)} values <= 0 "
                    f"(at positions {bad[:5]}). Set model.log false or shift the series."
                )
        z = self._levels(train_values)[-1]
        self.mean.fill_(z.mean())
        self.std.fill_(z.std().clamp_min(1e-8))
        self.context.fill_(context)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        # Lightning has already run the data module's setup, so its values are loaded.
        if stage == "fit" and datamodule is not None and hasattr(datamodule, "train_values"):
            self.fit_transform(datamodule.train_values, datamodule.values, datamodule.window)

    # -- model ----------------------------------------------------------------------------

    def forward(self, features: Tensor) -> Tensor:
        outputs, _ = self.backbone(features.unsqueeze(-1))
        return self.head(outputs[:, -1])

    def predict_next(self, window: Tensor) -> Tensor:
        """Raw windows ``(batch, time)`` -> raw forecasts of the next ``horizon`` values."""
        return self._to_raw(self(self.transform(window)), window)

    def _to_raw(self, scaled: Tensor, window: Tensor) -> Tensor:
        """Invert the transform of a prediction that follows the raw ``window``."""
        value = scaled * self.std + self.mean
        # Undo each differencing: the next value is the difference plus the value `lag` back.
        for lag, level in zip(reversed(self.differences), reversed(self._levels(window)[:-1])):
            value = value + level[:, -lag:][:, :1]
        return value.exp() if self.hparams.log else value

    @torch.no_grad()
    def forecast(self, history: Tensor, steps: int) -> Tensor:
        """Recursive multi-step forecast: each prediction is fed back as the newest value.

        ``history``: raw ``(time,)`` or ``(batch, time)``; returns ``(steps,)`` or ``(batch, steps)``.
        """
        squeeze = history.dim() == 1
        series = history.unsqueeze(0) if squeeze else history
        context = int(self.context) or series.shape[1]
        if series.shape[1] < context:
            raise InvalidInputError(
                f"forecast needs at least {context} past values (the training window), got {series.shape[1]}."
            )
        predictions = []
        for _ in range(steps):
            nxt = self.predict_next(series[:, -context:])[:, :1]
            predictions.append(nxt)
            series = torch.cat([series, nxt], dim=1)
        out = torch.cat(predictions, dim=1)
        return out[0] if squeeze else out

    def _step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Loss on the scaled values, the scaled predictions, the raw windows and targets."""
        inputs, targets = batch
        inputs = inputs.squeeze(-1)
        horizon = targets.shape[1]
        features = self.transform(torch.cat([inputs, targets], dim=1))
        scaled = self(features[:, :-horizon])
        return F.mse_loss(scaled, features[:, -horizon:]), scaled, inputs, targets

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch)[0]
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, scaled, inputs, targets = self._step(batch)
        predictions = self._to_raw(scaled, inputs)
        self.val_rmse(predictions, targets)
        self.val_mae(predictions, targets)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(targets), sync_dist=True)
        self.log_dict({"val/rmse": self.val_rmse, "val/mae": self.val_mae}, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, scaled, inputs, targets = self._step(batch)
        predictions = self._to_raw(scaled, inputs)
        self.test_rmse(predictions, targets)
        self.test_mae(predictions, targets)
        self._test_predictions.append(predictions[:, 0].detach().cpu())
        self.log("test/loss", loss, batch_size=len(targets), sync_dist=True)
        self.log_dict({"test/rmse": self.test_rmse, "test/mae": self.test_mae})

    def on_test_epoch_start(self) -> None:
        self._test_predictions = []

    def on_test_epoch_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "boundaries"):
            return
        test_start = datamodule.boundaries[1]
        values = datamodule.values.to(self.device)
        truth = values[test_start:]
        multistep = self.forecast(values[:test_start], len(truth))
        # Every process forecasts the whole test span from the same history, so these agree across processes.
        self.log("test/rmse_multistep", (multistep - truth).pow(2).mean().sqrt(), sync_dist=True)
        self.log("test/mae_multistep", (multistep - truth).abs().mean(), sync_dist=True)
        if self.trainer.is_global_zero:  # one writer for forecast.png
            one_step = torch.cat(self._test_predictions) if self._test_predictions else None
            self._plot(values.cpu(), test_start, one_step, multistep.cpu())

    def _plot(self, values: Tensor, test_start: int, one_step: Tensor | None, multistep: Tensor) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        t = torch.arange(len(values))
        ax.plot(t[: test_start + 1], values[: test_start + 1], color="black", label="history")
        ax.plot(t[test_start:], values[test_start:], color="black", linestyle=":", label="truth")
        if one_step is not None and len(one_step) == len(values) - test_start:
            ax.plot(t[test_start:], one_step, label="one-step forecast")
        ax.plot(t[test_start:], multistep, label="multi-step forecast")
        ax.set_xlabel("step")
        ax.legend()
        fig.tight_layout()
        logger = self.logger
        if logger is not None and hasattr(logger.experiment, "add_figure"):
            logger.experiment.add_figure("test/forecast", fig, global_step=self.global_step, close=False)
        folder = Path(logger.log_dir) if logger is not None and getattr(logger, "log_dir", None) else Path(self.trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / "forecast.png", dpi=100)
        plt.close(fig)

    # -- predict ----------------------------------------------------------------------------

    def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """Forecast ``predict_steps`` values past the end of the series; writes them to CSV."""
        series = batch[0] if isinstance(batch, (list, tuple)) else batch
        forecast = self.forecast(series, self.hparams.predict_steps)
        datamodule = getattr(self.trainer, "datamodule", None)
        future = datamodule.future_dates(len(forecast[0])) if hasattr(datamodule, "future_dates") else None
        path = output_file(self, "forecast.csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["date", "forecast"])
            for i, value in enumerate(forecast[0].tolist()):
                writer.writerow([future[i] if future else i + 1, f"{value:.4f}"])
        print(f"Wrote {len(forecast[0])} forecasts to {path}")
        return forecast

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


@torch.no_grad()
def backtest(model: Forecaster, values: Tensor, origins: range, steps: int) -> Tensor:
    """Rolling-origin evaluation: from each origin ``o``, forecast ``values[o:o+steps]`` using
    ``values[:o]`` only. Returns the errors (forecast - truth), ``(len(origins), steps)``."""
    errors = []
    for origin in origins:
        if origin + steps > len(values):
            raise InvalidInputError(f"origin {origin} + {steps} steps runs past the series' {len(values)} values.")
        errors.append(model.forecast(values[:origin], steps) - values[origin : origin + steps])
    return torch.stack(errors)

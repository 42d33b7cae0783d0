"""Forecasting a univariate series from windows of its past."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from seqmodels.backbones import Backbone
from seqmodels.errors import InvalidInputError
from seqmodels.preprocessing import SeriesTransform
from seqmodels.tasks.base import PreprocessedTask


class Forecaster(PreprocessedTask):
    """Predicts the next ``horizon`` values of a series from a window of its raw past.

    ``preprocessor`` is the :class:`~seqmodels.preprocessing.SeriesTransform` (log,
    differencing, standardisation fitted on the training part) that the data module fitted; it
    travels in the checkpoint, so a checkpoint alone maps raw values to raw forecasts. The loss
    is the MSE of the standardised values; metrics are in the series' own units: ``test/rmse``
    and ``test/mae`` one step (or one window) ahead, ``test/rmse_multistep`` and
    ``test/mae_multistep`` for the whole test span forecast recursively from its start.

    Shapes: ``forward`` maps transformed windows ``(batch, steps)`` to ``(batch, horizon)``;
    :meth:`predict_next` and :meth:`forecast` take and return raw values.

    Args:
        backbone: builds the recurrent backbone from its input size (1).
        window: raw past values per input window; linked from ``data.window`` by the CLI.
            ``None``: :meth:`forecast` reads the whole history it is given.
        horizon: values predicted per window; linked from ``data.horizon`` by the CLI.
        predict_steps: how far ``predict`` forecasts past the end of the series.
    """

    preprocessor: SeriesTransform | None
    prediction_file = "forecast.csv"

    def __init__(self, backbone: Callable[[int], Backbone], window: int | None = None, horizon: int = 1,
                 predict_steps: int = 12) -> None:
        super().__init__()
        if horizon < 1:
            raise InvalidInputError(f"horizon must be >= 1, got {horizon}.")
        if window is not None and window < 2:
            raise InvalidInputError(f"window must be at least 2 values, got {window}.")
        if predict_steps < 1:
            raise InvalidInputError(f"predict_steps must be >= 1, got {predict_steps}.")
        self.save_hyperparameters()
        self.backbone = backbone(1)
        self.head = nn.Linear(self.backbone.output_size, horizon)
        self.val_rmse, self.test_rmse = MeanSquaredError(squared=False), MeanSquaredError(squared=False)
        self.val_mae, self.test_mae = MeanAbsoluteError(), MeanAbsoluteError()

    def check_preprocessor(self, preprocessor: SeriesTransform) -> None:
        if not isinstance(preprocessor, SeriesTransform):
            raise InvalidInputError(f"A Forecaster reads values: it needs a SeriesTransform, got "
                                    f"{type(preprocessor).__name__}. Pair it with a series data module.")
        if preprocessor.differences and self.hparams.horizon != 1:
            raise InvalidInputError(
                f"Differencing ({preprocessor.differences}) forecasts one step at a time; set data.horizon 1 "
                f"(got {self.hparams.horizon}); forecast() and predict still go several steps, recursively."
            )
        window = self.hparams.window
        if window is not None and window - preprocessor.lost < 1:
            raise InvalidInputError(f"A window of {window} values leaves nothing after differencing at lags "
                                    f"{preprocessor.differences}; use a window longer than {preprocessor.lost}.")

    @property
    def transform(self) -> SeriesTransform:
        return self.require_preprocessor()

    # -- model ----------------------------------------------------------------------------

    def forward(self, features: Tensor) -> Tensor:
        outputs, _ = self.backbone(features.unsqueeze(-1))
        return self.head(outputs[:, -1])

    def predict_next(self, window: Tensor) -> Tensor:
        """Raw windows ``(batch, time)`` -> raw forecasts of the next ``horizon`` values."""
        return self.transform.inverse_next(self(self.transform.transform(window)), window)

    @torch.no_grad()
    def forecast(self, history: Tensor, steps: int) -> Tensor:
        """Recursive multi-step forecast: each prediction is fed back as the newest value.

        ``history``: raw ``(time,)`` or ``(batch, time)``, on any device; returns ``(steps,)`` or
        ``(batch, steps)`` on the history's device.
        """
        squeeze = history.dim() == 1
        series = (history.unsqueeze(0) if squeeze else history).to(self.device)
        context = self.hparams.window or series.shape[1]
        if series.shape[1] < context:
            raise InvalidInputError(
                f"forecast needs at least {context} past values (the training window), got {series.shape[1]}."
            )
        self.transform.check(series, "the history")
        predictions = []
        for _ in range(steps):
            nxt = self.predict_next(series[:, -context:])[:, :1]
            predictions.append(nxt)
            series = torch.cat([series, nxt], dim=1)
        out = torch.cat(predictions, dim=1).to(history.device)
        return out[0] if squeeze else out

    def _step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Loss on the scaled values, the raw predictions, and the raw targets."""
        inputs, targets = batch
        inputs = inputs.squeeze(-1)
        horizon = targets.shape[1]
        if horizon != self.hparams.horizon:
            raise InvalidInputError(
                f"The data's windows have {horizon} target values but the model predicts {self.hparams.horizon}; "
                "set the horizon once, as data.horizon (the CLI passes it to the model)."
            )
        features = self.transform.transform(torch.cat([inputs, targets], dim=1))
        scaled = self(features[:, :-horizon])
        loss = F.mse_loss(scaled, features[:, -horizon:])
        return loss, self.transform.inverse_next(scaled, inputs), targets

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch)[0]
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, predictions, targets = self._step(batch)
        self.val_rmse(predictions, targets)
        self.val_mae(predictions, targets)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(targets), sync_dist=True)
        self.log_dict({"val/rmse": self.val_rmse, "val/mae": self.val_mae}, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loader 0: the test windows, one step ahead. Loader 1: ``(history, truth)``, the series up
        to the test span and the span itself, forecast recursively."""
        if dataloader_idx == 1:
            history, truth = batch
            multistep = self.forecast(history, truth.shape[1])
            # Every process forecasts the same span from the same history, so these agree across processes.
            self.log("test/rmse_multistep", (multistep - truth).pow(2).mean().sqrt(), sync_dist=True,
                     add_dataloader_idx=False)
            self.log("test/mae_multistep", (multistep - truth).abs().mean(), sync_dist=True, add_dataloader_idx=False)
            return
        loss, predictions, targets = self._step(batch)
        self.test_rmse(predictions, targets)
        self.test_mae(predictions, targets)
        self.log("test/loss", loss, batch_size=len(targets), sync_dist=True, add_dataloader_idx=False)
        self.log_dict({"test/rmse": self.test_rmse, "test/mae": self.test_mae}, add_dataloader_idx=False)

    # -- predict ----------------------------------------------------------------------------

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """``{"date", "forecast"}`` for each of ``predict_steps`` steps past the end of ``batch["history"]``
        ``(1, time)``; ``batch["dates"]`` labels the steps."""
        forecast = self.forecast(batch["history"], self.hparams.predict_steps)[0]
        return [{"date": date, "forecast": round(float(value), 4)} for date, value in zip(batch["dates"], forecast)]


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

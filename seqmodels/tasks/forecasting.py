"""Forecasting a univariate series from windows of its past."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from seqmodels.backbones import Backbone


class Forecaster(L.LightningModule):
    """Predicts the next ``horizon`` values of a series from a window of its past.

    ``forward``: ``(batch, window)`` or ``(batch, window, 1)`` scaled values ->
    ``(batch, horizon)`` scaled values. The scaling (``mean``, ``std``, fitted on the
    training values by the data module) is kept in buffers, so a checkpoint alone turns raw
    values into forecasts; metrics are reported in the series' own units.

    Args:
        backbone: builds the recurrent backbone from its input size (1), e.g. ``LSTM`` with
            ``hidden_size`` etc. given in the config.
        horizon: values predicted per window.
        lr: Adam's learning rate, used when the config gives no ``optimizer``.
    """

    def __init__(self, backbone: Callable[[int], Backbone], horizon: int = 1, lr: float = 1e-3) -> None:
        super().__init__()
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}.")
        self.save_hyperparameters()
        self.backbone = backbone(1)
        self.head = nn.Linear(self.backbone.output_size, horizon)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.val_rmse, self.test_rmse = MeanSquaredError(squared=False), MeanSquaredError(squared=False)
        self.val_mae, self.test_mae = MeanAbsoluteError(), MeanAbsoluteError()

    # -- scaling ----------------------------------------------------------------------------

    def fit_scaling(self, train_values: Tensor) -> None:
        """Standardise with the mean and standard deviation of the training values."""
        self.mean.fill_(train_values.mean())
        self.std.fill_(train_values.std().clamp_min(1e-8))

    def scale(self, values: Tensor) -> Tensor:
        return (values - self.mean) / self.std

    def unscale(self, values: Tensor) -> Tensor:
        return values * self.std + self.mean

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and datamodule is not None and hasattr(datamodule, "train_values"):
            datamodule.setup(stage)
            self.fit_scaling(datamodule.train_values)

    # -- model ------------------------------------------------------------------------------

    def forward(self, window: Tensor) -> Tensor:
        if window.dim() == 2:
            window = window.unsqueeze(-1)
        outputs, _ = self.backbone(window)
        return self.head(outputs[:, -1])

    def _step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        inputs, targets = batch
        predictions = self(self.scale(inputs))
        loss = F.mse_loss(predictions, self.scale(targets))
        return loss, self.unscale(predictions), targets

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, predictions, targets = self._step(batch)
        self.val_rmse(predictions, targets)
        self.val_mae(predictions, targets)
        self.log("val/loss", loss, prog_bar=True)
        self.log_dict({"val/rmse": self.val_rmse, "val/mae": self.val_mae}, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, predictions, targets = self._step(batch)
        self.test_rmse(predictions, targets)
        self.test_mae(predictions, targets)
        self.log("test/loss", loss)
        self.log_dict({"test/rmse": self.test_rmse, "test/mae": self.test_mae})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

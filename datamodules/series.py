"""Univariate series as windows: ``window`` past values predict the next ``horizon`` values.

The split is chronological. A window belongs to the split its *targets* fall in, wholly;
its inputs may reach back into earlier months (that is the past, known at forecast time).
Scaling is fitted on the training values only and travels with the model (see
:class:`seqmodels.tasks.forecasting.Forecaster`), so a checkpoint forecasts raw values.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


def windows(values: torch.Tensor, first_target: int, end: int, window: int, horizon: int) -> TensorDataset:
    """Every window whose ``horizon`` targets lie in ``[first_target, end)``.

    ``values``: ``(time,)``. Returns inputs ``(n, window, 1)`` and targets ``(n, horizon)``.
    """
    starts = range(max(first_target, window), end - horizon + 1)
    if len(starts) == 0:
        return TensorDataset(torch.empty(0, window, 1), torch.empty(0, horizon))
    idx = torch.tensor(list(starts))
    inputs = values[idx[:, None] + torch.arange(-window, 0)]
    targets = values[idx[:, None] + torch.arange(horizon)]
    return TensorDataset(inputs.unsqueeze(-1), targets)


class _SeriesDataModule(L.LightningDataModule):
    """Windows over one series, split chronologically into train / val / test by count.

    Subclasses supply ``load_values() -> Tensor``: the whole series ``(time,)``, in its units.
    """

    def __init__(self, window: int, horizon: int, batch_size: int, val_size: int, test_size: int) -> None:
        super().__init__()
        for name, value in (("window", window), ("horizon", horizon), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        self.window, self.horizon, self.batch_size = window, horizon, batch_size
        self.val_size, self.test_size = val_size, test_size
        self.values: torch.Tensor | None = None  # the whole series, in its own units

    @property
    def boundaries(self) -> tuple[int, int]:
        """Index of the first validation value and of the first test value."""
        n = len(self.values)
        return n - self.val_size - self.test_size, n - self.test_size

    def setup(self, stage: str | None = None) -> None:
        if self.values is not None:
            return
        self.values = self.load_values()
        val_start, test_start = self.boundaries
        needed = self.window + self.horizon
        if val_start < needed:
            raise ValueError(
                f"The series has {len(self.values)} values; with val_size={self.val_size} and "
                f"test_size={self.test_size} only {max(val_start, 0)} remain for training, fewer than "
                f"window + horizon = {needed}. Use a longer series, a smaller window, or smaller splits."
            )
        self.train_set = windows(self.values, 0, val_start, self.window, self.horizon)
        self.val_set = windows(self.values, val_start, test_start, self.window, self.horizon)
        self.test_set = windows(self.values, test_start, len(self.values), self.window, self.horizon)

    @property
    def train_values(self) -> torch.Tensor:
        return self.values[: self.boundaries[0]]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)


class SineWaveDataModule(_SeriesDataModule):
    """A noisy sine wave generated in memory: the smallest real forecasting problem.

    ``num_points`` values of ``sin(2 pi t / period)`` plus Gaussian noise (fixed ``seed``);
    the last ``val_size`` and ``test_size`` values are held out for validation and test.
    """

    def __init__(self, num_points: int = 2000, period: float = 50.0, noise: float = 0.05, seed: int = 0,
                 window: int = 32, horizon: int = 1, batch_size: int = 64, val_size: int = 200,
                 test_size: int = 200) -> None:
        super().__init__(window, horizon, batch_size, val_size, test_size)
        if period <= 0 or not math.isfinite(period):
            raise ValueError(f"period must be a positive number of steps, got {period}.")
        self.num_points, self.period, self.noise, self.seed = num_points, period, noise, seed

    def load_values(self) -> torch.Tensor:
        t = torch.arange(self.num_points, dtype=torch.float32)
        noise = torch.randn(self.num_points, generator=torch.Generator().manual_seed(self.seed))
        return torch.sin(2 * math.pi * t / self.period) + self.noise * noise

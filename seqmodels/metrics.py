"""Forecast accuracy as forecasters report it: point errors, scaled errors, and interval quality.

The formulas are the M-competitions' (Makridakis & Hibon 2000; Hyndman & Koehler 2006):

* ``smape = 200 |y - f| / (|y| + |f|)`` (percent; 0 where both are 0), averaged over every
  forecast point of every series: M3's "symmetric MAPE".
* ``mase = |y - f| / scale``, ``scale`` = the series' in-sample mean absolute seasonal difference
  ``mean |y_t - y_{t-m}|`` (``m`` the seasonal period; 1 for none). Averaged over points, so
  each series weighs by its horizon, as in M4.
* ``mape = 100 |y - f| / |y|`` over the points where ``y != 0``.
* ``coverage``: the share of points inside the forecast interval; ``wql``, the weighted quantile
  loss ``2 sum_q sum_t pinball_q(y_t, f_t^q) / (|Q| sum_t |y_t|)``, a proper score for quantile
  forecasts (GluonTS's ``mean_wQuantileLoss``); ``crps`` for a Gaussian forecast in closed form.

:class:`ForecastMetrics` keeps sums only, so it syncs across processes by summing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


def smape(truth: Tensor, forecast: Tensor) -> Tensor:
    """Per-point sMAPE in percent (0 where truth and forecast are both 0)."""
    denominator = truth.abs() + forecast.abs()
    return torch.where(denominator > 0, 200 * (truth - forecast).abs() / denominator.clamp_min(1e-12),
                       torch.zeros_like(truth))


def seasonal_scale(history: Tensor, period: int) -> Tensor:
    """MASE's denominator: the mean absolute ``period``-lag difference of each row's history
    ``(..., time)`` (NaN entries, i.e. padding, left out). A flat history gives 0: the caller decides."""
    lag = period if history.shape[-1] > period else 1
    differences = (history[..., lag:] - history[..., :-lag]).abs()
    valid = ~differences.isnan()
    return torch.where(valid, differences, 0).sum(-1) / valid.sum(-1).clamp_min(1)


def pinball(truth: Tensor, quantiles: Tensor, levels: Tensor) -> Tensor:
    """Quantile (pinball) loss per point and level: ``truth (...)``, ``quantiles (..., Q)``."""
    error = truth.unsqueeze(-1) - quantiles
    return torch.maximum(levels * error, (levels - 1) * error)


def gaussian_crps(truth: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """CRPS of N(mean, std^2) at ``truth`` (Gneiting & Raftery 2007), per point."""
    z = (truth - mean) / std
    normal = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z))
    return std * (z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi))


class ForecastMetrics(Metric):
    """MAE, RMSE, MAPE, sMAPE, MASE, interval coverage, weighted quantile loss and (Gaussian
    forecasts) CRPS, accumulated over batches of ``(series, horizon)`` forecasts.

    ``update(truth, point, quantiles, levels, scale, crps=None)``: ``quantiles (B, H, Q)`` at
    ``levels (Q,)`` ascending; the interval whose coverage is counted runs from the lowest to the
    highest level (10% and 90%: the 80% interval); ``scale (B,)`` is each series' MASE scale.
    """

    full_state_update = False
    names = ("mae", "rmse", "mape", "smape", "mase", "coverage", "wql", "crps")

    def __init__(self) -> None:
        super().__init__()
        for name in ("abs_error", "squared_error", "ape", "ape_count", "sape", "ase", "covered", "pinball",
                     "abs_truth", "crps", "crps_count", "count"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, truth: Tensor, point: Tensor, quantiles: Tensor, levels: Tensor, scale: Tensor,
               crps: Tensor | None = None) -> None:
        truth, point, quantiles = truth.double(), point.double(), quantiles.double()
        error = (truth - point).abs()
        nonzero = truth != 0
        self.abs_error += error.sum()
        self.squared_error += error.pow(2).sum()
        self.ape += (100 * error / truth.abs().clamp_min(1e-12))[nonzero].sum()
        self.ape_count += nonzero.sum()
        self.sape += smape(truth, point).sum()
        self.ase += (error / scale.double().clamp_min(1e-12).unsqueeze(-1)).sum()
        self.covered += ((truth >= quantiles[..., 0]) & (truth <= quantiles[..., -1])).sum()
        self.pinball += pinball(truth, quantiles, levels.double().to(truth.device)).sum()
        self.abs_truth += truth.abs().sum() * len(levels)
        if crps is not None:
            self.crps += crps.double().sum()
            self.crps_count += crps.numel()
        self.count += truth.numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp_min(1)
        values = {
            "mae": self.abs_error / n,
            "rmse": (self.squared_error / n).sqrt(),
            "mape": self.ape / self.ape_count.clamp_min(1),
            "smape": self.sape / n,
            "mase": self.ase / n,
            "coverage": self.covered / n,
            "wql": 2 * self.pinball / self.abs_truth.clamp_min(1e-12),
        }
        if self.crps_count > 0:
            values["crps"] = self.crps / self.crps_count
        return {name: value.float() for name, value in values.items()}

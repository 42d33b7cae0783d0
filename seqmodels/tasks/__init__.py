"""One LightningModule per task."""

from seqmodels.tasks.forecasting import Forecaster

__all__ = ["Forecaster"]

"""One LightningModule per task."""

from seqmodels.tasks.classification import SequenceClassifier
from seqmodels.tasks.forecasting import Forecaster

__all__ = ["Forecaster", "SequenceClassifier"]

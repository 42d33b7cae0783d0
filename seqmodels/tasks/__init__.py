"""One LightningModule per task."""

from seqmodels.tasks.classification import SequenceClassifier
from seqmodels.tasks.forecasting import Forecaster
from seqmodels.tasks.generation import CharLanguageModel

__all__ = ["CharLanguageModel", "Forecaster", "SequenceClassifier"]

"""One LightningModule per task."""

from seqmodels.tasks.classification import SequenceClassifier
from seqmodels.tasks.ensemble import ClassifierEnsemble, Ensemble, ForecastEnsemble
from seqmodels.tasks.forecasting import Forecaster
from seqmodels.tasks.generation import CharLanguageModel
from seqmodels.tasks.global_forecasting import GlobalForecaster
from seqmodels.tasks.language_model import WordLanguageModel

__all__ = ["CharLanguageModel", "ClassifierEnsemble", "Ensemble", "ForecastEnsemble", "Forecaster", "GlobalForecaster",
           "SequenceClassifier", "WordLanguageModel"]

"""Several trained models of one task served as one: classifiers and global forecasters."""

from __future__ import annotations

import abc
import contextvars
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seqmodels.checkpoints import CheckpointError, load_checkpoint
from seqmodels.errors import InvalidInputError
from seqmodels.metrics import ForecastMetrics
from seqmodels.preprocessing import PanelTransform, WordTokenizer
from seqmodels.tasks.base import PreprocessedTask
from seqmodels.tasks.classification import Classifications, SequenceClassifier
from seqmodels.tasks.global_forecasting import (Forecast, GlobalForecaster, forecast_records, log_metrics,
                                                update_metrics)


class Ensemble(PreprocessedTask, abc.ABC):
    """Members loaded from their checkpoints, all of ``member_type`` and read with one preprocessing
    object (the first member's); for ``validate``, ``test``, ``predict`` and ``export`` (``fit``
    trains the members, one by one)."""

    member_type: type[PreprocessedTask]

    @property
    def prediction_file(self) -> str:  # predict writes what one member would
        return self.member_type.prediction_file

    def __init__(self, checkpoints: Sequence[str]) -> None:
        super().__init__()
        if isinstance(checkpoints, str) or len(checkpoints) < 2:
            raise InvalidInputError(
                f"model.checkpoints must list two or more {self.member_type.__name__} checkpoints, got "
                f"{checkpoints!r}; for one model, use its own config with --ckpt_path.")
        self.save_hyperparameters()
        # Each member is built in an empty context: under the CLI, Lightning hands the hyperparameters
        # of the model being instantiated (this ensemble's) to save_hyperparameters through a context
        # variable, which the members' own __init__ would otherwise record as theirs.
        members = [contextvars.Context().run(self._load_member, str(path)) for path in checkpoints]
        for path, member in zip(checkpoints[1:], members[1:]):
            self._check_alike(members[0], member, f"The models {checkpoints[0]} and {path}")
        self.members = nn.ModuleList(member.eval() for member in members)
        self.preprocessor = members[0].preprocessor

    def _load_member(self, path: str) -> PreprocessedTask:
        checkpoint = read_member(path)
        expected = self.member_type.__name__
        saved_by = checkpoint.get("hyper_parameters", {}).get("_class_path", "")
        if saved_by.rsplit(".", 1)[-1] != expected or "preprocessor" not in checkpoint:
            raise CheckpointError(
                f"model.checkpoints: {path} is not a {expected} checkpoint with its preprocessing (it was saved by "
                f"{saved_by or 'an unknown model'}). List the checkpoints of {expected} runs.")
        return self.member_type.load_from_checkpoint(path, map_location="cpu", weights_only=True)

    @abc.abstractmethod
    def _check_alike(self, first: Any, other: Any, which: str) -> None:
        """Refuse a member that would read the data, or answer, differently from the first."""

    @abc.abstractmethod
    def _reads_alike(self, a: Any, b: Any) -> bool:
        """Whether two preprocessing objects turn the same data into the same model inputs."""

    def check_preprocessor(self, preprocessor: Any) -> None:
        self.members[0].check_preprocessor(preprocessor)  # the kind and sizes a member needs
        if self._preprocessor is not None and not self._reads_alike(preprocessor, self._preprocessor):
            raise InvalidInputError("The data was read with other preprocessing than the ensemble's members were "
                                    "trained with; let the data module take the members' (the CLI does).")


class ClassifierEnsemble(Classifications, Ensemble):
    """The mean of several trained :class:`SequenceClassifier` s' class probabilities.

    Built from the members' checkpoints for ``validate``, ``test`` and ``predict``::

        python main.py test --config configs/imdb_ensemble.yaml \\
            --model.checkpoints '[run_a/checkpoints/best-2-1056.ckpt, run_b/checkpoints/best-2-1056.ckpt]'

    The members must read text with one tokenizer, the same words with the same ids: classifiers
    fine-tuned from one language model (``configs/imdb_lstm_pretrained.yaml``) share theirs. The
    data is read with it and with the data section's reading settings (``eval_max_length``), as
    for one classifier. Metrics, ``predict``'s records and :meth:`classify` are a classifier's
    (:class:`~seqmodels.tasks.classification.Classifications`): ``forward`` returns the log of the
    mean probability, which a softmax turns back into that mean, so the loss is the mean's
    cross-entropy. Probabilities are averaged rather than logits so that a member that is sure
    cannot outvote the others by the size of its logits alone.

    Args:
        checkpoints: two or more ``SequenceClassifier`` checkpoints (``.ckpt`` files).
    """

    member_type = SequenceClassifier
    preprocessor: WordTokenizer | None

    def __init__(self, checkpoints: Sequence[str]) -> None:
        super().__init__(checkpoints)
        first = self.members[0]
        self.labels = first.labels
        self._add_metrics(first.hparams.num_classes)

    def _reads_alike(self, a: WordTokenizer, b: WordTokenizer) -> bool:
        return a.vocabulary() == b.vocabulary()

    def _check_alike(self, first: SequenceClassifier, other: SequenceClassifier, which: str) -> None:
        if not self._reads_alike(first.preprocessor, other.preprocessor):
            raise InvalidInputError(f"{which} read text with different tokenizers, so a review would reach them as "
                                    "different ids. Ensemble classifiers that share one tokenizer, such as "
                                    "fine-tunes of one language model.")
        if other.labels != first.labels:
            raise InvalidInputError(f"{which} name their classes differently ({first.labels} and {other.labels}).")

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Token ids ``(batch, time)`` -> log of the members' mean class probabilities ``(batch, classes)``."""
        mean = torch.stack([m(input_ids, lengths).float().softmax(-1) for m in self.members]).mean(0)
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


class ForecastEnsemble(Ensemble):
    """Several trained :class:`GlobalForecaster` s as one: per series, step and level, the median of
    the members' quantiles, and of their point forecasts.

    Built from the members' checkpoints for ``validate``, ``test`` and ``predict`` (``forecast.csv``
    as a single forecaster writes it)::

        python main.py test --config configs/m3_ensemble.yaml \\
            --model.checkpoints '[final_0/checkpoints/last.ckpt, final_1/checkpoints/last.ckpt, ...]'

    The members must read the data alike: the same transform (log, seasonal adjustment,
    covariates), window, horizon and quantile levels; the data section must give that window and
    horizon. The median (the mean of the two middle values for an even count; the mean for two
    members) keeps one poor member from pulling the forecast, and keeps each member's quantiles in
    order. Metrics: the forecaster's (``test/smape``, ``test/mase``, ``test/coverage``, ...), without
    a loss, since the members' losses do not combine.

    Args:
        checkpoints: two or more ``GlobalForecaster`` checkpoints (``.ckpt`` files).
    """

    member_type = GlobalForecaster
    preprocessor: PanelTransform | None

    def __init__(self, checkpoints: Sequence[str]) -> None:
        super().__init__(checkpoints)
        first = self.members[0]
        self.register_buffer("levels", first.levels.clone(), persistent=False)
        self.val_metrics, self.test_metrics = ForecastMetrics(), ForecastMetrics()

    def _reads_alike(self, a: PanelTransform, b: PanelTransform) -> bool:
        return a.state_dict() == b.state_dict()

    def _check_alike(self, first: GlobalForecaster, other: GlobalForecaster, which: str) -> None:
        if not self._reads_alike(first.preprocessor, other.preprocessor):
            raise InvalidInputError(f"{which} read the series with different transforms (log, seasonal adjustment "
                                    "or covariates); ensemble forecasters trained with the same data settings.")
        for name in ("window", "horizon"):
            if other.hparams[name] != first.hparams[name]:
                raise InvalidInputError(f"{which} have different {name}s ({first.hparams[name]} and "
                                        f"{other.hparams[name]}); their forecasts would not line up.")
        if not torch.equal(other.levels, first.levels):
            raise InvalidInputError(f"{which} forecast different quantile levels ({first.levels.tolist()} and "
                                    f"{other.levels.tolist()}).")

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        first = self.members[0].hparams
        for name in ("window", "horizon"):
            given = getattr(datamodule, name, first[name])
            if given != first[name]:
                raise InvalidInputError(f"data.{name} is {given} but the ensemble's members were trained with "
                                        f"{first[name]}; set --data.{name} {first[name]}.")

    def forecast(self, batch: dict[str, Tensor]) -> Forecast:
        """The batch's forecasts in the series' units: the members' median."""
        forecasts = [member.forecast(batch) for member in self.members]
        return Forecast(member_median([f.point for f in forecasts]), member_median([f.quantiles for f in forecasts]))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        update_metrics(self.val_metrics, batch, self.forecast(batch), self.levels)

    def on_validation_epoch_end(self) -> None:
        log_metrics(self, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        update_metrics(self.test_metrics, batch, self.forecast(batch), self.levels)

    def on_test_epoch_end(self) -> None:
        log_metrics(self, "test", self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """One record per series and step, as :meth:`GlobalForecaster.predict_step` writes them."""
        return forecast_records(batch, self.forecast(batch), self.levels)


def read_member(path: str) -> dict:
    """A member's checkpoint, as plain data, with errors that speak of ``model.checkpoints``."""
    if not Path(path).is_file():
        raise CheckpointError(f"model.checkpoints: {path} does not exist. List the .ckpt files of trained runs, e.g. "
                              "lightning_logs/<run_name>/version_0/checkpoints/best-*.ckpt.")
    try:
        return load_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(f"model.checkpoints: {error}") from None


def member_median(values: Sequence[Tensor]) -> Tensor:
    """The elementwise median over members: the mean of the two middle values for an even count.
    Written with a sort, which the exported graphs (ONNX, TorchScript, torch.export) support."""
    ordered = torch.stack(list(values)).sort(0).values
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

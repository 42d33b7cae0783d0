"""Several trained classifiers served as one model."""

from __future__ import annotations

import contextvars
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seqmodels.checkpoints import CheckpointError, load_checkpoint
from seqmodels.errors import InvalidInputError
from seqmodels.preprocessing import WordTokenizer
from seqmodels.tasks.base import PreprocessedTask
from seqmodels.tasks.classification import Classifications, SequenceClassifier


class ClassifierEnsemble(Classifications, PreprocessedTask):
    """The mean of several trained :class:`SequenceClassifier` s' class probabilities.

    Built from the members' checkpoints for ``validate``, ``test`` and ``predict`` (each member is
    trained by ``fit`` first; the ensemble itself is not trained)::

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

    preprocessor: WordTokenizer | None
    prediction_file = "predictions.jsonl"

    def __init__(self, checkpoints: Sequence[str]) -> None:
        super().__init__()
        if isinstance(checkpoints, str) or len(checkpoints) < 2:
            raise InvalidInputError(
                f"model.checkpoints must list two or more classifier checkpoints, got {checkpoints!r}; for one "
                "classifier, test its own config with --ckpt_path.")
        self.save_hyperparameters()
        # Each member is built in an empty context: under the CLI, Lightning hands the hyperparameters
        # of the model being instantiated (this ensemble's) to save_hyperparameters through a context
        # variable, which the members' own __init__ would otherwise record as theirs.
        members = [contextvars.Context().run(_load_member, str(path)) for path in checkpoints]
        first = members[0]
        for path, member in zip(checkpoints[1:], members[1:]):
            if member.preprocessor.vocabulary() != first.preprocessor.vocabulary():
                raise InvalidInputError(
                    f"The classifiers {checkpoints[0]} and {path} read text with different tokenizers, so a review "
                    "would reach them as different ids. Ensemble classifiers that share one tokenizer, such as "
                    "fine-tunes of one language model.")
            if member.labels != first.labels:
                raise InvalidInputError(f"The classifiers {checkpoints[0]} and {path} name their classes "
                                        f"differently ({first.labels} and {member.labels}).")
        self.members = nn.ModuleList(member.eval() for member in members)
        self.labels = first.labels
        self._add_metrics(first.hparams.num_classes)
        self.preprocessor = first.preprocessor

    def check_preprocessor(self, preprocessor: WordTokenizer) -> None:
        if not isinstance(preprocessor, WordTokenizer):
            raise InvalidInputError(f"A ClassifierEnsemble reads words: it needs a WordTokenizer, got "
                                    f"{type(preprocessor).__name__}. Pair it with the IMDB data module.")
        if self._preprocessor is not None and preprocessor.vocabulary() != self._preprocessor.vocabulary():
            raise InvalidInputError("The data was read with another tokenizer than the ensemble's members were "
                                    "trained with; let the data module take the members' (the CLI does).")

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Token ids ``(batch, time)`` -> log of the members' mean class probabilities ``(batch, classes)``."""
        mean = torch.stack([m(input_ids, lengths).float().softmax(-1) for m in self.members]).mean(0)
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


def _load_member(path: str) -> SequenceClassifier:
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(f"model.checkpoints: {error}") from None
    saved_by = checkpoint.get("hyper_parameters", {}).get("_class_path", "")
    if saved_by.rsplit(".", 1)[-1] != SequenceClassifier.__name__ or "preprocessor" not in checkpoint:
        raise CheckpointError(
            f"model.checkpoints: {path} is not a SequenceClassifier checkpoint with its tokenizer (it was saved by "
            f"{saved_by or 'an unknown model'}). List the best-*.ckpt files of classifier runs.")
    return SequenceClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)

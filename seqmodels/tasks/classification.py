"""Classifying token sequences (sentiment of movie reviews) with a recurrent backbone."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from seqmodels.backbones import Backbone
from seqmodels.embeddings import load_word_vectors
from seqmodels.finetuning import layer_groups
from seqmodels.errors import InvalidInputError
from seqmodels.preprocessing import WordTokenizer
from seqmodels.tasks.base import PreprocessedTask

Pooling = Literal["last", "mean", "max", "concat"]
POOLINGS = get_args(Pooling)


def pool(outputs: Tensor, state, lengths: Tensor | None, how: Pooling, num_directions: int) -> Tensor:
    """One vector per sequence from backbone outputs ``(batch, time, features)``.

    ``last``: the top layer's final state of each direction, i.e. the output at each sequence's
    true last token (forward) and at its first (backward), never a padding position.
    ``mean`` / ``max``: over the valid positions only.
    ``concat``: ``last``, ``max`` and ``mean`` side by side (ULMFiT's concat pooling), three times
    the backbone's output size.
    """
    if how == "concat":
        return torch.cat([pool(outputs, state, lengths, part, num_directions) for part in ("last", "max", "mean")], -1)
    if how == "last":
        h = state[0] if isinstance(state, tuple) else state
        top = h[-num_directions:]  # (directions, batch, hidden)
        return top.transpose(0, 1).reshape(outputs.shape[0], -1)
    if lengths is None:
        return outputs.mean(1) if how == "mean" else outputs.amax(1)
    lengths = lengths.to(outputs.device)
    if how == "mean":  # the backbone zeroes outputs past each length
        return outputs.sum(1) / lengths.to(outputs.dtype).unsqueeze(1)
    valid = torch.arange(outputs.shape[1], device=outputs.device) < lengths.unsqueeze(1)
    return outputs.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(1)


class Classifications:
    """What a classifier does with its logits: validation and test metrics, ``predict``'s records and
    :meth:`classify` on raw text. Shared by :class:`SequenceClassifier` and
    :class:`~seqmodels.tasks.ClassifierEnsemble`; the class provides ``forward(input_ids, lengths)
    -> logits``, ``labels`` and a :class:`~seqmodels.preprocessing.WordTokenizer` preprocessor.

    Metrics for val and test: accuracy, F1 (macro) and AUROC, logged as ``val/acc``, ``val/f1``,
    ``val/auroc``, ``test/acc``, ...
    """

    labels: list[str]

    def _add_metrics(self, num_classes: int) -> None:
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes),
        })
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val/"), metrics.clone(prefix="test/")

    def _step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = self(batch["input_ids"], batch.get("lengths")).float()
        return F.cross_entropy(logits, batch["labels"]), logits

    def _evaluate(self, batch: dict[str, Tensor], stage: str, metrics: MetricCollection) -> None:
        loss, logits = self._step(batch)
        metrics.update(logits.softmax(-1), batch["labels"])
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(logits), sync_dist=True)
        self.log_dict(metrics, prog_bar=stage == "val", batch_size=len(logits))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def _records(self, logits: Tensor, texts: Sequence[str]) -> list[dict[str, Any]]:
        probabilities = logits.float().softmax(-1).cpu()
        confidence, label = probabilities.max(-1)
        return [{"text": text, "label": self.labels[int(k)], "probability": round(float(p), 6)}
                for text, k, p in zip(texts, label, confidence)]

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """``{"index", "text", "label", "probability"}`` per review; ``probability`` is the predicted class's."""
        logits = self(batch["input_ids"], batch.get("lengths"))
        records = self._records(logits, batch["text"])
        for record, index in zip(records, batch["index"].tolist()):
            record["index"] = index
        return records

    # -- raw text in, labels out -------------------------------------------------------------

    @torch.no_grad()
    def classify(self, texts: Sequence[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """``[{"text", "label", "probability"}]`` for raw texts, in their order.

        Reads them as evaluation does (the tokenizer's ``eval_max_length`` and padding side),
        in batches of similar length, so it gives ``predict``'s and ``test``'s numbers.
        An empty text still gets a prediction (from the backbone reading one padding token).
        """
        tokenizer = self.require_preprocessor()
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        ids = tokenizer.encode(texts)
        lengths = [len(tokenizer.truncate(i, training=False)) for i in ids]
        order = np.argsort(lengths, kind="stable")
        was_training = self.training
        self.eval()
        results: list[dict[str, Any] | None] = [None] * len(texts)
        for start in range(0, len(texts), batch_size):
            rows = order[start: start + batch_size]
            batch = tokenizer.collate([ids[i] for i in rows], training=False)
            logits = self(batch["input_ids"].to(self.device), batch.get("lengths"))
            for row, record in zip(rows, self._records(logits, [texts[i] for i in rows])):
                results[row] = record
        self.train(was_training)
        return results


class SequenceClassifier(Classifications, PreprocessedTask):
    """Embedding -> recurrent backbone -> pooling -> dropout -> linear head -> logits.

    The loss is cross-entropy on logits (log-softmax inside, numerically stable). Metrics, predict's
    records and :meth:`classify`: :class:`Classifications`.

    Batches are dicts: ``input_ids`` ``(batch, time)`` (0 is padding), optional ``lengths``
    ``(batch,)`` (right padding; without them every position is read), ``labels``; predict
    batches carry ``index`` and ``text`` instead of labels.

    ``preprocessor`` is the :class:`~seqmodels.preprocessing.WordTokenizer` the data was read
    with; it travels in the checkpoint, so :meth:`classify` reads raw text exactly as ``test``
    did after ``load_from_checkpoint`` alone.

    Args:
        vocab_size: rows of the embedding table; linked from ``data.vocab_size`` by the CLI.
        embedding_dim: size of a token's vector.
        backbone: builds the recurrent backbone from its input size (``embedding_dim``).
        pooling: how the outputs become one vector (see :func:`pool`).
        num_classes: 2 for sentiment.
        dropout: on the embeddings and on the pooled vector.
        labels: class names written by ``predict``.
        embeddings: a word2vec/GloVe text file (optionally ``.gz``) whose vectors initialise the
            embedding rows of the tokens it has, when ``fit`` starts a new run (a resumed or loaded
            checkpoint keeps its own weights; the file is not needed to predict). The coverage of the
            vocabulary is printed; see :func:`~seqmodels.embeddings.load_word_vectors`.
        freeze_embeddings: keep the embedding table fixed during training.
        init_from: a :class:`~seqmodels.tasks.WordLanguageModel` checkpoint (``configs/imdb_lm.yaml``)
            whose embedding and backbone weights start this model when ``fit`` starts a new run (see
            :meth:`initialise_from`); the CLI also reads the data with that checkpoint's tokenizer.
        init_backward_from: the checkpoint of a language model trained on reversed text
            (``--data.reverse true``), for the backward direction of a bidirectional backbone.
            Without it that direction starts from random weights (the forward model's weights would
            read the text backwards with weights that learnt to read it forwards). With
            ``init_from`` too, both directions read the forward model's embedding, so pretrain the
            backward model on those vectors (``WordLanguageModel(embedding_from=...)``); a warning
            says when it learnt its own. Alone, it gives the embedding as well, and the forward
            direction starts from random weights: the mirror image of ``init_from`` alone, a
            classifier to ensemble with a forward one (ULMFiT's forward and backward classifiers).
        layer_lr_decay: discriminative learning rates (ULMFiT's 2.6): the head trains at the
            optimizer's ``lr``, each layer group below it (backbone layers, then the embedding) at the
            rate of the one above divided by this; 1 keeps one rate.
        gradual_unfreezing: train only the head in the first epoch, and unfreeze one more layer
            group from the top each epoch after (ULMFiT).
    """

    preprocessor: WordTokenizer | None
    prediction_file = "predictions.jsonl"

    def __init__(self, vocab_size: int, backbone: Callable[[int], Backbone], embedding_dim: int = 128,
                 pooling: Pooling = "last", num_classes: int = 2, dropout: float = 0.0,
                 labels: list[str] | None = None, embeddings: str | None = None,
                 freeze_embeddings: bool = False, init_from: str | None = None,
                 init_backward_from: str | None = None, layer_lr_decay: float = 1.0,
                 gradual_unfreezing: bool = False) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise InvalidInputError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}.")
        if num_classes < 2:
            raise InvalidInputError(f"num_classes must be at least 2, got {num_classes}.")
        labels = list(labels) if labels is not None else (["negative", "positive"] if num_classes == 2 else
                                                          [str(i) for i in range(num_classes)])
        if len(labels) != num_classes:
            raise InvalidInputError(f"labels names {len(labels)} classes but num_classes is {num_classes}.")
        if layer_lr_decay <= 0:
            raise InvalidInputError(f"layer_lr_decay must be positive (ULMFiT uses 2.6), got {layer_lr_decay}.")
        self.save_hyperparameters()
        self.labels = labels
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        self.backbone = backbone(embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.output_size * (3 if pooling == "concat" else 1), num_classes)
        self._add_metrics(num_classes)

    def check_preprocessor(self, preprocessor: WordTokenizer) -> None:
        self.check_word_tokenizer(preprocessor, "the IMDB data module")

    def setup(self, stage: str) -> None:
        # Before Lightning restores a checkpoint's weights, so a resumed run keeps what it learnt.
        if stage == "fit" and self.hparams.embeddings:
            self.load_word_vectors(self.hparams.embeddings)
        if stage == "fit" and (self.hparams.init_from or self.hparams.init_backward_from):
            copied = self.initialise_from(self.hparams.init_from, self.hparams.init_backward_from)
            print(f"Initialised from the language model(s): {len(copied)} tensors ({', '.join(copied)}).")

    @torch.no_grad()
    def initialise_from(self, forward: str | None, backward: str | None = None) -> list[str]:
        """Copy word language models' embedding and backbones into this classifier; returns the names
        of the tensors written.

        ``forward``'s backbone weights go to this backbone's forward direction, ``backward``'s (a model
        trained with ``data.reverse``) to the backward direction; the embedding rows (all but padding,
        row 0) come from ``forward``, or from ``backward`` when it is the only one. The vocabularies must
        be the same words with the same ids, and the embedding size, cell, ``hidden_size`` and
        ``num_layers`` the same; anything else is refused before a tensor is written.
        """
        if forward is None and backward is None:
            raise InvalidInputError("initialise_from needs a forward or a backward language model checkpoint.")
        if backward is not None and self.backbone.num_directions != 2:
            raise InvalidInputError("init_backward_from initialises the backward direction, but this backbone is "
                                    "unidirectional: set bidirectional true or drop init_backward_from.")
        plan: list[tuple[str, Tensor, Tensor]] = []
        own = dict(self.named_parameters())
        for path, suffix, option in ((forward, "", "init_from"), (backward, "_reverse", "init_backward_from")):
            if path is None:
                continue
            state = self._language_model_state(path, option, reverse=bool(suffix))
            if not plan:  # the first model given brings the embedding
                embedding = vectors = state.pop("embedding")
                if embedding.shape[1] != self.hparams.embedding_dim:
                    raise InvalidInputError(
                        f"The language model {path} has {embedding.shape[1]}-dimensional word vectors but "
                        f"model.embedding_dim is {self.hparams.embedding_dim}; use the language model's size.")
                rows = min(len(embedding), self.embedding.num_embeddings)
                plan.append(("embedding.weight", self.embedding.weight[1:rows], embedding[1:rows]))
            elif not torch.equal(state.pop("embedding"), vectors):
                # Measured: a backward LSTM that learnt other word vectors than the shared embedding
                # fine-tuned to 90.12% test accuracy, against 91.05% leaving that direction random.
                warnings.warn(
                    f"The backward language model {path} reads other word vectors than the forward one, whose "
                    "embedding this classifier shares between its directions: its LSTM will read vectors it was not "
                    "trained on. Pretrain it with --model.embedding_from <forward checkpoint> --model.tie_weights "
                    "false.", stacklevel=2)
            for name, tensor in state.items():
                target = f"backbone.{name}{suffix}"
                if target not in own or own[target].shape != tensor.shape:
                    have = tuple(own[target].shape) if target in own else "nothing"
                    raise InvalidInputError(
                        f"The language model {path} does not fit this classifier's backbone: its {name} is "
                        f"{tuple(tensor.shape)}, the classifier has {have} for {target}. Pretrain with the same cell, "
                        "hidden_size and num_layers as model.backbone (and impl does not matter).")
                plan.append((target, own[target], tensor))
        for _, destination, source in plan:
            destination.copy_(source.to(destination))
        return list(dict.fromkeys(name for name, _, _ in plan))

    def _language_model_state(self, path: str, option: str, reverse: bool) -> dict[str, Tensor]:
        from seqmodels.tasks.language_model import language_model_weights

        return language_model_weights(path, self.require_preprocessor(), option, reverse)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters from the bottom up: embedding, each backbone layer, head."""
        return layer_groups(self.embedding, self.backbone, [self.head])

    def learning_rate_scales(self) -> list[float] | None:
        """Each layer group's share of the optimizer's rate (None: one rate for all)."""
        decay = self.hparams.layer_lr_decay
        if decay == 1:
            return None
        count = len(self.layer_groups())
        return [decay ** -(count - 1 - i) for i in range(count)]

    def on_train_epoch_start(self) -> None:
        if not self.hparams.gradual_unfreezing:
            return
        groups = self.layer_groups()
        first_trained = max(len(groups) - 1 - self.current_epoch, 0)
        for i, group in enumerate(groups):
            frozen = i < first_trained or (i == 0 and self.hparams.freeze_embeddings)
            for parameter in group:
                parameter.requires_grad_(not frozen)
        self.log("train/unfrozen_groups", float(len(groups) - first_trained))

    @torch.no_grad()
    def load_word_vectors(self, path: str) -> float:
        """Copy the vectors of ``path`` into the embedding rows of the tokens it has (others start
        near them); returns the share of the vocabulary found."""
        vocabulary = self.require_preprocessor().vocabulary()
        vectors = load_word_vectors(path, vocabulary, self.hparams.embedding_dim)
        rows = min(len(vectors.weight), self.embedding.num_embeddings)
        self.embedding.weight[:rows] = vectors.weight[:rows].to(self.embedding.weight)
        print(f"Word vectors: {int(vectors.found.sum()):,} of {len(vocabulary) - 1:,} tokens found in {path} "
              f"({vectors.coverage:.1%}); the others start from the found vectors' mean and spread.")
        return vectors.coverage

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Token ids ``(batch, time)`` -> logits ``(batch, num_classes)``."""
        x = self.dropout(self.embedding(input_ids))
        outputs, state = self.backbone(x, lengths=lengths)
        pooled = pool(outputs, state, lengths, self.hparams.pooling, self.backbone.num_directions)
        return self.head(self.dropout(pooled))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

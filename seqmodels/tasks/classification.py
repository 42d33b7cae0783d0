"""Classifying token sequences (sentiment of movie reviews) with a recurrent backbone."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from seqmodels.backbones import Backbone
from seqmodels.errors import InvalidInputError
from seqmodels.tasks.outputs import output_file

Pooling = Literal["last", "mean", "max"]


def pool(outputs: Tensor, state, lengths: Tensor | None, how: Pooling, num_directions: int) -> Tensor:
    """One vector per sequence from backbone outputs ``(batch, time, features)``.

    ``last``: the top layer's final state of each direction, i.e. the output at each sequence's
    true last token (forward) and at its first (backward), never a padding position.
    ``mean`` / ``max``: over the valid positions only.
    """
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


class SequenceClassifier(L.LightningModule):
    """Embedding -> recurrent backbone -> pooling -> dropout -> linear head -> logits.

    The loss is cross-entropy on logits (log-softmax inside, numerically stable). Metrics for
    val and test: accuracy, F1 (macro) and AUROC, logged as ``val/acc``, ``val/f1``,
    ``val/auroc``, ``test/acc``, ...

    Batches are dicts: ``input_ids`` ``(batch, time)`` (0 is padding), optional ``lengths``
    ``(batch,)`` (right padding; without them every position is read), ``labels``.

    The tokenizer travels in the checkpoint as its JSON string (taken from the data module at
    ``fit``), so :meth:`classify` works on raw text after ``load_from_checkpoint`` alone.

    Args:
        vocab_size: rows of the embedding table; linked from ``data.vocab_size`` by the CLI.
        embedding_dim: size of a token's vector.
        backbone: builds the recurrent backbone from its input size (``embedding_dim``).
        pooling: how the outputs become one vector (see :func:`pool`).
        num_classes: 2 for sentiment.
        dropout: on the embeddings and on the pooled vector.
        lr, weight_decay: AdamW's, used when the config gives no ``optimizer``.
        labels: class names written by ``predict``.
    """

    def __init__(self, vocab_size: int, backbone: Callable[[int], Backbone], embedding_dim: int = 128,
                 pooling: Pooling = "last", num_classes: int = 2, dropout: float = 0.0,
                 lr: float = 1e-3, weight_decay: float = 0.0,
                 labels: list[str] | None = None) -> None:
        super().__init__()
        if pooling not in ("last", "mean", "max"):
            raise InvalidInputError(f"pooling must be 'last', 'mean' or 'max', got {pooling!r}.")
        if num_classes < 2:
            raise InvalidInputError(f"num_classes must be at least 2, got {num_classes}.")
        labels = list(labels) if labels is not None else (["negative", "positive"] if num_classes == 2 else
                                                          [str(i) for i in range(num_classes)])
        if len(labels) != num_classes:
            raise InvalidInputError(f"labels names {len(labels)} classes but num_classes is {num_classes}.")
        self.save_hyperparameters()
        self.output_path: str | None = None  # where predict writes; the CLI's --output
        self.labels = labels
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.backbone = backbone(embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.output_size, num_classes)
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes),
        })
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val/"), metrics.clone(prefix="test/")
        self.tokenizer = None
        self._predictions: list[dict] = []

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Token ids ``(batch, time)`` -> logits ``(batch, num_classes)``."""
        x = self.dropout(self.embedding(input_ids))
        outputs, state = self.backbone(x, lengths)
        pooled = pool(outputs, state, lengths, self.hparams.pooling, self.backbone.num_directions)
        return self.head(self.dropout(pooled))

    def _step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = self(batch["input_ids"], batch.get("lengths"))
        return F.cross_entropy(logits.float(), batch["labels"]), logits.float()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str, metrics: MetricCollection) -> None:
        loss, logits = self._step(batch)
        metrics.update(logits.softmax(-1), batch["labels"])
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(logits), sync_dist=True)
        self.log_dict(metrics, prog_bar=stage == "val", batch_size=len(logits))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # -- the tokenizer travels with the weights --------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        tokenizer = getattr(datamodule, "tokenizer", None)
        if stage == "fit" and tokenizer is not None:
            if tokenizer.get_vocab_size() > self.hparams.vocab_size:
                raise InvalidInputError(
                    f"The tokenizer has {tokenizer.get_vocab_size()} tokens but the model's embedding "
                    f"has {self.hparams.vocab_size} rows; set model.vocab_size to data.vocab_size."
                )
            self.tokenizer = tokenizer

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizer is not None:
            checkpoint["tokenizer"] = self.tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "tokenizer" in checkpoint:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_str(checkpoint["tokenizer"])

    # -- raw text in, labels out -------------------------------------------------------------

    @torch.no_grad()
    def classify(self, texts: Sequence[str], max_length: int | None = None, batch_size: int = 64) -> list[dict]:
        """``[{"text", "label", "probability"}]`` for raw texts; ``probability`` is the predicted class's.

        An empty text still gets a prediction (from the backbone reading one padding token).
        ``max_length`` keeps the first tokens of long texts (default: all of them).
        """
        if self.tokenizer is None:
            raise RuntimeError("This model has no tokenizer: it was neither trained through the IMDB data module "
                               "nor loaded from a checkpoint of such a run, so it cannot read raw text.")
        if isinstance(texts, str):
            texts = [texts]
        was_training = self.training
        self.eval()
        results = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start: start + batch_size])
            ids = [e.ids[:max_length] if max_length else e.ids for e in self.tokenizer.encode_batch(chunk)]
            lengths = torch.tensor([max(len(i), 1) for i in ids])
            input_ids = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
            for row, sequence in enumerate(ids):
                input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            probabilities = self(input_ids.to(self.device), lengths).float().softmax(-1).cpu()
            confidence, label = probabilities.max(-1)
            results.extend({"text": text, "label": self.labels[int(k)], "probability": round(float(p), 6)}
                           for text, k, p in zip(chunk, label, confidence))
        self.train(was_training)
        return results

    def predict_step(self, batch: list[str], batch_idx: int) -> list[dict]:
        results = self.classify(batch)
        self._predictions.extend(results)
        return results

    def on_predict_epoch_start(self) -> None:
        self._predictions = []

    def on_predict_epoch_end(self) -> None:
        path = output_file(self, "predictions.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        with open(partial, "w", encoding="utf-8") as f:
            for record in self._predictions:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        partial.replace(path)
        print(f"Wrote {len(self._predictions)} predictions to {path}")

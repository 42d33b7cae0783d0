"""A word-level recurrent language model, pretrained on reviews to initialise a classifier."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from seqmodels.backbones import Backbone
from seqmodels.errors import InvalidInputError
from seqmodels.preprocessing import WordTokenizer
from seqmodels.tasks.base import StreamedLanguageModel


class WordLanguageModel(StreamedLanguageModel):
    """Embedding -> unidirectional recurrent backbone -> adaptive softmax over the vocabulary.

    The output layer over a 30k vocabulary would dominate the cost as a full softmax; it is torch's
    :class:`~torch.nn.AdaptiveLogSoftmaxWithLoss` (Grave et al., 2017): the ``cutoffs[0]`` most
    frequent words (the tokenizer numbers words by frequency) and one entry per rarer cluster are
    scored for every token, a cluster's words only for the tokens that belong to it.

    ``tie_weights`` (default) makes the input embedding the output layer's word vectors (Press &
    Wolf, 2017): the adaptive softmax is built with ``div_value=1``, so each cluster scores its words
    against a projection of the hidden state with one ``embedding_dim`` vector per word, and the
    embedding table *is* those vectors (the shortlist's rows of the head, then each cluster's). A
    backbone whose output size differs from ``embedding_dim`` reaches them through a linear
    projection. Untied, the embedding is its own table and the clusters shrink by 4 per level.

    ``preprocessor`` is the classifier's :class:`~seqmodels.preprocessing.WordTokenizer`, saved in
    the checkpoint, so ``SequenceClassifier(init_from=...)`` can check that the words line up.
    Metrics: ``train/loss``, ``val/loss`` (nats per word) and ``val/ppl`` (perplexity).

    Args:
        vocab_size: words, linked from ``data.vocab_size``.
        backbone: builds the recurrent backbone from ``embedding_dim``; must be unidirectional.
        embedding_dim: size of a word's vector (the classifier's ``embedding_dim`` to initialise it).
        dropout: on the embeddings and on the backbone's outputs, the same units at every time step
            of a sequence (locked dropout, as AWD-LSTM).
        cutoffs: where the adaptive softmax's clusters start; cutoffs at or past ``vocab_size`` are
            dropped (tiny vocabularies get a plain softmax).
        tie_weights: share the input and output word vectors (see above).
        embedding_from: another language model's checkpoint whose input word vectors this model
            reads, fixed (``fit`` of a new run copies them; needs ``tie_weights: false``). For the
            backward model of a bidirectional classifier: the classifier has one embedding, the
            forward model's, so the backward model must learn to read those vectors too.
    """

    def __init__(self, vocab_size: int, backbone: Callable[[int], Backbone], embedding_dim: int = 128,
                 dropout: float = 0.1, cutoffs: Sequence[int] = (2_000, 10_000), tie_weights: bool = True,
                 embedding_from: str | None = None) -> None:
        super().__init__()
        if list(cutoffs) != sorted(set(cutoffs)) or any(c < 1 for c in cutoffs):
            raise InvalidInputError(f"cutoffs must be increasing positive integers, got {list(cutoffs)}.")
        if embedding_from and tie_weights:
            raise InvalidInputError("embedding_from keeps the copied word vectors fixed, but tie_weights true would make "
                                    "them the output layer too: set model.tie_weights false.")
        self.save_hyperparameters()
        self.backbone = backbone(embedding_dim)
        if self.backbone.num_directions != 1:
            raise InvalidInputError("A language model's backbone must be unidirectional: set bidirectional false. "
                                    "For a bidirectional classifier pretrain a second model with data.reverse true.")
        features = embedding_dim if tie_weights else self.backbone.output_size
        self.projection = (nn.Linear(self.backbone.output_size, embedding_dim)
                           if tie_weights and self.backbone.output_size != embedding_dim else nn.Identity())
        kept = [c for c in cutoffs if c < vocab_size - 1]
        self.output = nn.AdaptiveLogSoftmaxWithLoss(features, vocab_size, kept or [vocab_size - 1],
                                                    div_value=1.0 if tie_weights else 4.0)
        self.embedding = None if tie_weights else nn.Embedding(vocab_size, embedding_dim)
        if embedding_from:
            self.embedding.weight.requires_grad_(False)
        self.nll = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def check_preprocessor(self, preprocessor: WordTokenizer) -> None:
        self.check_word_tokenizer(preprocessor, "IMDBLanguageModelDataModule")

    def setup(self, stage: str) -> None:
        # Before Lightning restores a checkpoint's weights, so a resumed run keeps its own.
        if stage == "fit" and self.hparams.embedding_from:
            vectors = language_model_weights(self.hparams.embedding_from, self.require_preprocessor(),
                                             "embedding_from")["embedding"]
            if vectors.shape != self.embedding.weight.shape:
                raise InvalidInputError(
                    f"The language model {self.hparams.embedding_from} has word vectors of shape "
                    f"{tuple(vectors.shape)}, this model's embedding is {tuple(self.embedding.weight.shape)}: use its "
                    "embedding_dim and the same vocab_size.")
            with torch.no_grad():
                self.embedding.weight.copy_(vectors)

    def embedding_weight(self) -> Tensor:
        """The ``(vocab_size, embedding_dim)`` table that embeds the input words."""
        if self.embedding is not None:
            return self.embedding.weight
        return tied_embedding(self.output.head.weight, [tail[1].weight for tail in self.output.tail],
                              self.output.shortlist_size)

    def forward(self, ids: Tensor, state=None) -> tuple[Tensor, object]:
        """Ids ``(batch, time)`` -> the features the output layer scores ``(batch, time, features)``,
        and the final state."""
        p = self.hparams.dropout
        x = _locked_dropout(F.embedding(ids, self.embedding_weight()), p, self.training)
        outputs, state = self.backbone(x, state)
        return self.projection(_locked_dropout(outputs, p, self.training)), state

    def log_probabilities(self, ids: Tensor) -> Tensor:
        """Log-probabilities of every next word ``(batch, time, vocab_size)`` (for inspection; training
        and evaluation score only the words that come)."""
        features, _ = self(ids)
        with _float32(features):
            return self.output.log_prob(features.flatten(0, 1).float()).view(*ids.shape, -1)

    def stream_loss(self, inputs: Tensor, targets: Tensor, state) -> tuple[Tensor, object]:
        features, state = self(inputs, state)
        with _float32(features):
            return self.output(features.flatten(0, 1).float(), targets.flatten()).loss, state

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        loss, _ = self.stream_loss(inputs, targets, None)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def log_stream_metrics(self, stage: str, loss: Tensor, count: int) -> None:
        self.nll[stage].update(loss.detach().float(), count)

    def _log_perplexity(self, stage: str) -> None:
        # exp of the epoch's token-weighted mean loss: the mean of per-block perplexities is not a perplexity.
        self.log(f"{stage}/ppl", self.nll[stage].compute().exp(), prog_bar=True)
        self.nll[stage].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_perplexity("val")

    def on_test_epoch_end(self) -> None:
        self._log_perplexity("test")


def tied_embedding(head: Tensor, cluster_weights: Sequence[Tensor], shortlist: int) -> Tensor:
    """The input embedding of a tied adaptive softmax: the shortlist's rows of the head, then each
    cluster's word vectors, in id order."""
    return torch.cat([head[:shortlist], *cluster_weights])


def language_model_weights(path: str, tokenizer: WordTokenizer, option: str,
                           reverse: bool | None = None) -> dict[str, Tensor]:
    """A :class:`WordLanguageModel` checkpoint's backbone weights (by their backbone names) and its
    input embedding (``"embedding"``), after checking that it reads the same words as ``tokenizer``
    and, unless ``reverse`` is None, that it read the text in that direction (``data.reverse``);
    ``option`` names the setting that asked for it, for the error messages."""
    from seqmodels.checkpoints import load_checkpoint
    from seqmodels.preprocessing import from_checkpoint

    checkpoint = load_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    if "cutoffs" not in hparams or "preprocessor" not in checkpoint:
        raise InvalidInputError(f"{path} is not a WordLanguageModel checkpoint (pretrain one with "
                                f"configs/imdb_lm.yaml); {option} needs its embedding, backbone and tokenizer.")
    read_reversed = (checkpoint.get("datamodule_hyper_parameters") or {}).get("reverse")
    if reverse is not None and read_reversed is not None and read_reversed != reverse:
        trained, other = ("reversed", "--model.init_backward_from") if read_reversed else ("forward", "--model.init_from")
        raise InvalidInputError(
            f"The language model {path} was trained on {trained} text (data.reverse {str(read_reversed).lower()}), "
            f"so its LSTM reads a review {'from the end' if read_reversed else 'from the start'}; as "
            f"--model.{option} it would read the other way. Give it as {other}, and for --model.{option} a model "
            f"trained with --data.reverse {str(reverse).lower()}.")
    theirs = from_checkpoint(checkpoint["preprocessor"]).vocabulary()
    ours = tokenizer.vocabulary()
    if theirs != ours:
        differing = sorted(set(theirs.items()) ^ set(ours.items()))[:3]
        raise InvalidInputError(
            f"The language model {path} was trained with another vocabulary ({len(theirs):,} tokens; this model's "
            f"tokenizer has {len(ours):,}; e.g. {differing}). Its word vectors would land on the wrong words. "
            f"Train through the CLI with --model.{option} (the data is then read with the language model's "
            "tokenizer), or use the same data settings (data_dir, vocab_size, val_size, seed).")
    state = checkpoint["state_dict"]
    weights = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return {**weights, "embedding": embedding_from_state(state, hparams)}


def embedding_from_state(state: Mapping[str, Tensor], hparams: Mapping) -> Tensor:
    """A :class:`WordLanguageModel` checkpoint's input embedding, from its ``state_dict`` alone."""
    if "embedding.weight" in state:
        return state["embedding.weight"]
    clusters = sorted({int(k.split(".")[2]) for k in state if k.startswith("output.tail.")})
    cutoffs = [c for c in hparams["cutoffs"] if c < hparams["vocab_size"] - 1] or [hparams["vocab_size"] - 1]
    return tied_embedding(state["output.head.weight"], [state[f"output.tail.{i}.1.weight"] for i in clusters],
                          cutoffs[0])


def _float32(features: Tensor):
    """Autocast off for the adaptive softmax: it gathers its clusters' log-probabilities into a
    float32 buffer, which refuses the lower-precision ones autocast would give (bf16/fp16-mixed)."""
    return torch.autocast(features.device.type, enabled=False)


def _locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout with one mask per sequence, shared by its time steps: ``(batch, time, features)``."""
    if not training or p == 0:
        return x
    return F.dropout1d(x.transpose(1, 2), p, True).transpose(1, 2)

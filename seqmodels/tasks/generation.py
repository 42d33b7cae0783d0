"""Character-level language modelling and text generation with a recurrent backbone."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmodels.backbones import Backbone
from seqmodels.errors import InvalidInputError
from seqmodels.preprocessing import CharVocabulary
from seqmodels.tasks.base import StreamedLanguageModel


class CharLanguageModel(StreamedLanguageModel):
    """Embedding -> recurrent backbone -> dropout -> linear head over the vocabulary.

    Trained on next-character cross-entropy; ``val/loss`` and ``test/loss`` are in nats per
    character, ``val/bpc`` and ``test/bpc`` in bits. Validation and test read their held-out text
    as contiguous streams and carry the recurrent state from one block to the next, so every
    character is predicted once with all the text before it in its stream as context.

    ``preprocessor`` is the :class:`~seqmodels.preprocessing.CharVocabulary` (index 0 is the
    unknown symbol); it travels in the checkpoint, so :meth:`generate` works after
    ``load_from_checkpoint`` alone, with no training text.

    Args:
        vocab_size: rows of the embedding and of the output layer; linked from ``data.vocab_size``.
        backbone: builds the recurrent backbone from its input size (``embedding_dim``); must be
            unidirectional (a language model cannot read the future).
        embedding_dim: size of a character's vector.
        dropout: on the backbone's outputs.
        locked_dropout: drop the same units at every time step of a sequence (variational or
            "locked" dropout) instead of independently per character: a common regulariser for
            recurrent language models, and 128x fewer random numbers for windows of 128.
        sample_length: characters of the sample logged to TensorBoard at each validation.
        length, temperature, top_k, num_samples: what ``predict`` generates (``num_samples`` texts
            from the data module's prompt, with the run's ``seed_everything`` as the seed; write
            several to a ``.jsonl`` output, one text per line).
    """

    def __init__(self, vocab_size: int, backbone: Callable[[int], Backbone], embedding_dim: int = 64,
                 dropout: float = 0.0, locked_dropout: bool = False, sample_length: int = 200,
                 length: int = 500, temperature: float = 1.0, top_k: int | None = None, num_samples: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.backbone = backbone(embedding_dim)
        if self.backbone.num_directions != 1:
            raise InvalidInputError("A language model's backbone must be unidirectional: set bidirectional false.")
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.output_size, vocab_size)

    prediction_file = "generated.txt"

    @property
    def vocabulary(self) -> CharVocabulary | None:
        return self.preprocessor

    def check_preprocessor(self, preprocessor: CharVocabulary) -> None:
        if not isinstance(preprocessor, CharVocabulary):
            raise InvalidInputError(f"A CharLanguageModel reads characters: it needs a CharVocabulary, got "
                                    f"{type(preprocessor).__name__}. Pair it with the CharTextDataModule.")
        if len(preprocessor) != self.hparams.vocab_size:
            raise InvalidInputError(
                f"The data has {len(preprocessor)} characters but the model's vocab_size is "
                f"{self.hparams.vocab_size}; link model.vocab_size to data.vocab_size."
            )

    def forward(self, ids: Tensor, state=None) -> tuple[Tensor, object]:
        """Ids ``(batch, time)`` -> logits ``(batch, time, vocab_size)`` and the final state."""
        outputs, state = self.backbone(self.embedding(ids), state)
        if self.hparams.locked_dropout:
            # Dropout1d zeroes whole channels of (batch, channel, time): one mask per sequence.
            outputs = F.dropout1d(outputs.transpose(1, 2), self.hparams.dropout, self.training).transpose(1, 2)
        else:
            outputs = self.dropout(outputs)
        return self.head(outputs), state

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        loss = self._loss(self(inputs)[0], targets)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def stream_loss(self, inputs: Tensor, targets: Tensor, state) -> tuple[Tensor, object]:
        logits, state = self(inputs, state)
        return self._loss(logits, targets), state

    def log_stream_metrics(self, stage: str, loss: Tensor, count: int) -> None:
        self.log(f"{stage}/bpc", loss / math.log(2), prog_bar=True, batch_size=count, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.vocabulary is None or self.trainer.sanity_checking or self.logger is None:
            return
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            sample = self.generate(self.vocabulary.default_prompt(), self.hparams.sample_length, temperature=0.8,
                                   seed=0)
            # Markdown in TensorBoard: keep line breaks and spacing as generated.
            experiment.add_text("val/sample", "    " + sample.replace("\n", "\n    "), self.global_step)

    # -- generation ------------------------------------------------------------------------------

    def generate(self, prompt: str, length: int, temperature: float = 1.0, top_k: int | None = None,
                 seed: int | None = None) -> str:
        """``length`` characters sampled after ``prompt`` (the prompt is not repeated); one stream
        of :meth:`generate_many`."""
        return self.generate_many(prompt, length, 1, temperature, top_k, seed)[0]

    @torch.inference_mode()
    def generate_many(self, prompt: str, length: int, num_samples: int = 1, temperature: float = 1.0,
                      top_k: int | None = None, seed: int | None = None) -> list[str]:
        """``num_samples`` texts of ``length`` characters sampled after ``prompt``, side by side.

        The prompt is read once; then each sampled character advances the recurrent state by one
        step, so the cost is linear in ``length``, and the streams share every step's matrix
        products. ``temperature`` < 1 sharpens the distribution; ``top_k`` keeps only the k
        likeliest characters; ``temperature == 0`` is greedy. The same ``seed`` gives the same
        texts. Characters of the prompt the vocabulary lacks read as the unknown symbol; a prompt
        made only of such characters is an error. Each step is the backbone's :meth:`step`:
        plain matrix products, cheaper than a fused kernel's set-up for one step.
        """
        vocabulary = self.require_preprocessor()
        if length < 0 or temperature < 0 or (top_k is not None and top_k < 1) or num_samples < 1:
            raise InvalidInputError(
                f"length and temperature must be >= 0, top_k and num_samples >= 1, got {length}, {temperature}, "
                f"{top_k}, {num_samples}."
            )
        if not prompt:
            raise InvalidInputError("The prompt is empty; give at least one character (for example a newline).")
        unknown = vocabulary.unknown(prompt)
        if len(set(prompt)) == len(unknown):
            raise InvalidInputError(
                f"None of the prompt's characters are in the model's vocabulary: {unknown}. The "
                f"vocabulary has {len(vocabulary) - 1} characters, e.g. "
                f"{vocabulary.chars[1:40]!r}."
            )
        generator = torch.Generator(device=self.device)
        generator.manual_seed(torch.initial_seed() if seed is None else seed)
        was_training = self.training
        self.eval()
        ids = torch.tensor([vocabulary.encode(prompt)] * num_samples, device=self.device)
        logits, state = self(ids)
        scores = logits[:, -1].float()
        out = torch.empty(num_samples, length, dtype=torch.long)
        for i in range(length):
            scores[:, 0] = float("-inf")  # never emit the unknown symbol
            if temperature == 0:
                nxt = scores.argmax(-1)
            else:
                scores = scores / temperature
                if top_k is not None and top_k < scores.shape[1]:
                    cutoff = scores.topk(top_k, dim=-1).values[:, -1:]
                    scores = scores.masked_fill(scores < cutoff, float("-inf"))
                nxt = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
            out[:, i] = nxt
            hidden, state = self.backbone.step(self.embedding(nxt), state)
            scores = self.head(hidden).float()
        self.train(was_training)
        return [vocabulary.decode(row) for row in out.tolist()]

    def predict_step(self, prompt: str, batch_idx: int) -> list[dict[str, str]]:
        """``num_samples`` texts: the prompt and ``length`` characters generated after it, seeded by
        the run's seed."""
        texts = self.generate_many(prompt, self.hparams.length, self.hparams.num_samples, self.hparams.temperature,
                                   self.hparams.top_k)
        return [{"text": prompt + text} for text in texts]

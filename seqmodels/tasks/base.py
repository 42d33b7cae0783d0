"""What every task shares: the preprocessing object it carries, and the default optimizer."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from seqmodels.errors import InvalidInputError
from seqmodels.preprocessing import Preprocessor, WordTokenizer, from_checkpoint, to_checkpoint


class PreprocessedTask(L.LightningModule):
    """A LightningModule that carries the preprocessing object its data was read with.

    ``preprocessor`` is set once, by the CLI's hand-off (or by hand: ``model.preprocessor =
    datamodule.preprocessor`` after ``datamodule.setup("fit")``), saved in every checkpoint as
    plain data under ``"preprocessor"``, and restored by ``load_from_checkpoint``.

    The optimizer comes from the config's ``optimizer:`` / ``lr_scheduler:`` sections; used
    from Python without them, :meth:`configure_optimizers` gives Adam with torch's defaults.
    """

    prediction_file = "predictions.jsonl"  # the file ``predict`` writes when no --output is given

    def __init__(self) -> None:
        super().__init__()
        self._preprocessor: Preprocessor | None = None

    @property
    def preprocessor(self) -> Preprocessor | None:
        return self._preprocessor

    @preprocessor.setter
    def preprocessor(self, value: Preprocessor | None) -> None:
        if value is not None:
            self.check_preprocessor(value)
        self._preprocessor = value

    def check_preprocessor(self, preprocessor: Preprocessor) -> None:
        """Refuse an object this task cannot use (of another kind, or sized for another model)."""

    def check_word_tokenizer(self, preprocessor: Preprocessor, data_module: str) -> None:
        """Refuse anything but a WordTokenizer that fits the model's ``vocab_size`` rows."""
        if not isinstance(preprocessor, WordTokenizer):
            raise InvalidInputError(f"A {type(self).__name__} reads words: it needs a WordTokenizer, got "
                                    f"{type(preprocessor).__name__}. Pair it with {data_module}.")
        if preprocessor.vocab_size > self.hparams.vocab_size:
            raise InvalidInputError(
                f"The tokenizer has {preprocessor.vocab_size} tokens but the model's embedding has "
                f"{self.hparams.vocab_size} rows; set model.vocab_size to data.vocab_size."
            )

    def require_preprocessor(self) -> Preprocessor:
        if self._preprocessor is None:
            raise InvalidInputError(
                f"This {type(self).__name__} has no preprocessing: it was neither trained through a data module "
                "nor loaded from a checkpoint of such a run, so it cannot read raw input. Load it with "
                f"{type(self).__name__}.load_from_checkpoint(path), or set model.preprocessor = "
                "datamodule.preprocessor after datamodule.setup('fit')."
            )
        return self._preprocessor

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._preprocessor is not None:
            checkpoint["preprocessor"] = to_checkpoint(self._preprocessor)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "preprocessor" in checkpoint:
            self.preprocessor = from_checkpoint(checkpoint["preprocessor"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters())


class StreamedLanguageModel(PreprocessedTask):
    """A language model evaluated on contiguous streams (see ``datamodules.chartext.Streams``).

    Validation and test batches are ``(index, inputs, targets)``, block ``index`` of every stream;
    the recurrent state is carried from block ``index - 1``, so every token is predicted once with
    all the text before it in its stream as context. ``val/loss`` and ``test/loss`` are in nats per
    token; subclasses add their own unit in :meth:`log_stream_metrics`.
    """

    _stream_state: Any = None
    _stream_index: int = -1

    def stream_loss(self, inputs: Tensor, targets: Tensor, state: Any) -> tuple[Tensor, Any]:
        """The mean next-token loss of a block read from ``state``, and the state after it."""
        raise NotImplementedError

    def log_stream_metrics(self, stage: str, loss: Tensor, count: int) -> None:
        """Log what else ``loss`` (nats per token over ``count`` tokens) means, e.g. bits or perplexity."""

    def _stream_step(self, batch: tuple[int, Tensor, Tensor], stage: str) -> None:
        index, inputs, targets = batch
        # Carry the state only from the block just before this one in the same streams.
        state = self._stream_state if int(index) == self._stream_index + 1 else None
        loss, state = self.stream_loss(inputs, targets, state)
        self._stream_state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        self._stream_index = int(index)
        count = targets.numel()
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=count, sync_dist=True)
        self.log_stream_metrics(stage, loss, count)

    def validation_step(self, batch: tuple[int, Tensor, Tensor], batch_idx: int) -> None:
        self._stream_step(batch, "val")

    def test_step(self, batch: tuple[int, Tensor, Tensor], batch_idx: int) -> None:
        self._stream_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._stream_state, self._stream_index = None, -1

    on_test_epoch_start = on_validation_epoch_start

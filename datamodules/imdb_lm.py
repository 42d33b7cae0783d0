"""The IMDB reviews as one stream of words, for pretraining a language model (ULMFiT, Dai & Le 2015)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from datamodules.chartext import EveryBlock, RandomOffsets, Streams, Windows
from datamodules.imdb import IMDBDataModule
from datamodules.paths import cache_dir
from seqmodels.errors import InvalidInputError
from seqmodels.files import atomic_path, atomic_write
from seqmodels.preprocessing import WordTokenizer

REVIEW_END = 0  # [PAD]: the stream has no padding, so its id marks where one review ends


class IMDBLanguageModelDataModule(L.LightningDataModule):
    """Reviews without their labels, read as the classifier reads them, for next-word prediction.

    The tokenizer is the classifier's: :class:`~datamodules.IMDBDataModule`'s, fitted on the same
    training part (same ``data_dir``, ``vocab_size``, ``val_size``, ``seed``, ``min_frequency``),
    so a language model pretrained here initialises that classifier word for word
    (``--model.init_from``, which also hands this tokenizer to the classifier's data module).

    Text: the classifier's training part plus the ``unsupervised`` split (50,000 unlabelled reviews
    in the hub's layout; used when present). ``lm_val_size`` of the unlabelled reviews (of the
    training part when there are none), drawn with ``seed``, are held out for validation. The
    classifier's validation reviews and the whole test split never reach the language model.

    Every review's ids, followed by :data:`REVIEW_END`, are written once into a flat uint16 file
    in ``cache_dir`` (in chunks, keyed by the tokenizer and the data) and memory-mapped, so the
    20 million tokens of 71,500 reviews train in bounded memory. Training draws
    ``samples_per_epoch`` windows of ``seq_length`` words at random offsets each epoch;
    validation reads its reviews once as ``batch_size`` contiguous streams (the model carries its
    state along them, so the perplexity counts every word once, with its context).

    ``reverse``: read every stream backwards, for the backward language model that initialises
    the backward direction of a bidirectional classifier (as ULMFiT does).
    """

    preprocessor_type = WordTokenizer

    def __init__(self, data_dir: str | None = None, vocab_size: int = 30_000, val_size: int = 2_500, seed: int = 0,
                 min_frequency: int = 1, seq_length: int = 70, batch_size: int = 64,
                 samples_per_epoch: int = 64_000, lm_val_size: int = 1_000, reverse: bool = False,
                 cache_dir: str | None = None) -> None:
        super().__init__()
        if seq_length < 1 or batch_size < 1 or samples_per_epoch < 1 or lm_val_size < 1:
            raise InvalidInputError(
                "seq_length, batch_size, samples_per_epoch and lm_val_size must be positive, got "
                f"{seq_length}, {batch_size}, {samples_per_epoch} and {lm_val_size}."
            )
        self.save_hyperparameters()
        self._reviews: IMDBDataModule | None = None
        self._stream: tuple[Path, dict] | None = None
        self.train_ids: np.ndarray | None = None
        self.val_ids: np.ndarray | None = None

    @property
    def reviews(self) -> IMDBDataModule:
        """The classifier's data module (reading whole reviews), for its reading of the data and its tokenizer."""
        # Built on first use, not in __init__: LightningCLI hands the config's arguments to the first
        # save_hyperparameters call made while this module is built, which would be the inner one's.
        if self._reviews is None:
            keys = ("data_dir", "vocab_size", "val_size", "seed", "min_frequency", "cache_dir")
            self._reviews = IMDBDataModule(**{key: self.hparams[key] for key in keys}, max_length=None,
                                           eval_max_length=None)
        return self._reviews

    @property
    def preprocessor(self) -> WordTokenizer | None:
        return self.reviews.preprocessor

    @preprocessor.setter
    def preprocessor(self, tokenizer: WordTokenizer | None) -> None:
        self.reviews.preprocessor = tokenizer

    @property
    def vocab_size(self) -> int:
        """Rows of the model's embedding and output layer (linked to ``model.vocab_size``)."""
        return self.hparams.vocab_size

    def _texts(self, raw, train) -> tuple[list, list, str]:
        """The language model's training and validation reviews (datasets), and a key for them, from
        the raw splits and the classifier's training part ``train``."""
        if "unsupervised" in raw:
            unlabelled = raw["unsupervised"]
        else:
            print("IMDB data has no 'unsupervised' split: the language model reads the labelled training "
                  "reviews only.")
            unlabelled, train = train, None
        n = len(unlabelled)
        if not 0 < self.hparams.lm_val_size < n:
            raise InvalidInputError(f"lm_val_size must lie in [1, {n - 1}] (there are {n} reviews to hold out "
                                    f"from), got {self.hparams.lm_val_size}.")
        order = np.random.default_rng(self.hparams.seed).permutation(n)
        held_out = unlabelled.select(np.sort(order[: self.hparams.lm_val_size]))
        rest = unlabelled.select(np.sort(order[self.hparams.lm_val_size:]))
        parts = [rest] if train is None else [train, rest]
        key = [p._fingerprint for p in parts] + [held_out._fingerprint]
        return parts, held_out, json.dumps(key)

    def _encoded(self) -> tuple[Path, dict]:
        """The cached token stream and its metadata, encoding the reviews if needed (once per process)."""
        if self._stream is None:
            self._stream = self._encode()
        return self._stream

    def _encode(self) -> tuple[Path, dict]:
        import datasets

        datasets.disable_progress_bars()
        raw = self.reviews._load_raw()
        train, _ = self.reviews._split(raw["train"])
        tokenizer = self.reviews.preprocessor or self.reviews._fitted_tokenizer(train)
        self.reviews.preprocessor = tokenizer
        if tokenizer.vocab_size > np.iinfo(np.uint16).max:
            raise InvalidInputError(f"The tokenizer has {tokenizer.vocab_size} tokens; the language model's "
                                    "stream stores ids as uint16, so keep data.vocab_size below 65,536.")
        parts, held_out, data_key = self._texts(raw, train)
        key = hashlib.sha256((tokenizer.tokenizer_json + data_key).encode()).hexdigest()[:16]
        folder = cache_dir(self.hparams.cache_dir) / "imdb_lm"
        array, meta_file = folder / f"stream-{key}.u16", folder / f"stream-{key}.json"
        if meta_file.is_file() and array.is_file():
            return array, json.loads(meta_file.read_text(encoding="utf-8"))
        folder.mkdir(parents=True, exist_ok=True)
        counts = {}
        with atomic_path(array) as partial, open(partial, "wb") as f:
            for name, sources in (("train", parts), ("val", [held_out])):
                counts[name] = {"reviews": 0, "tokens": 0}
                for source in sources:
                    for start in range(0, len(source), 5_000):  # bounded memory: 5,000 reviews at a time
                        ids = tokenizer.encode(source[start: start + 5_000]["text"])
                        flat = np.fromiter((i for review in ids for i in (*review, REVIEW_END)), dtype=np.uint16,
                                           count=sum(len(r) + 1 for r in ids))
                        f.write(flat.tobytes())
                        counts[name]["reviews"] += len(ids)
                        counts[name]["tokens"] += len(flat)
        meta = {"split": counts["train"]["tokens"], "counts": counts}
        atomic_write(meta_file, lambda f: f.write(json.dumps(meta)))  # last: its presence means the array is whole
        return array, meta

    def prepare_data(self) -> None:
        self._encoded()

    def setup(self, stage: str) -> None:
        if self.train_ids is not None:
            return
        array, meta = self._encoded()
        ids = np.memmap(array, dtype=np.uint16, mode="r")
        self.train_ids, self.val_ids = ids[: meta["split"]], ids[meta["split"]:]
        if self.hparams.reverse:
            self.train_ids, self.val_ids = self.train_ids[::-1], self.val_ids[::-1]
        need = self.hparams.seq_length + 1
        for part, size in (("training", len(self.train_ids)), ("validation", len(self.val_ids))):
            if size < need * (self.hparams.batch_size if part == "validation" else 1):
                raise InvalidInputError(
                    f"The language model's {part} text has {size} tokens, too few for "
                    f"{'data.batch_size streams of ' if part == 'validation' else 'one window of '}"
                    f"seq_length + 1 = {need}. Use a smaller data.seq_length or data.batch_size, or a larger "
                    "data.lm_val_size."
                )

    def train_dataloader(self) -> DataLoader:
        windows = Windows(self.train_ids, 0, len(self.train_ids), self.hparams.seq_length)
        sampler = RandomOffsets(windows.positions, self.hparams.samples_per_epoch, self.hparams.seed)
        return DataLoader(windows, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        streams = Streams(self.val_ids, 0, len(self.val_ids), self.hparams.batch_size, self.hparams.seq_length)
        return DataLoader(streams, batch_size=None, sampler=EveryBlock(len(streams)))


"""Any UTF-8 text file as a stream of characters (default: Tiny Shakespeare)."""

from __future__ import annotations

import codecs
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.paths import cache_dir, data_dir, fetch
from datamodules.sharding import ShardedSampler, share, world
from seqmodels.errors import InvalidInputError, MissingInputError
from seqmodels.files import atomic_path, atomic_write
from seqmodels.preprocessing import CharVocabulary

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CHUNK = 1 << 22  # bytes decoded at a time: memory stays bounded whatever the file size


def _decoded_chunks(path: Path) -> Iterator[tuple[int, str]]:
    """The file's text in pieces of about ``CHUNK`` bytes, each with the byte offset where it
    starts; a file that is not UTF-8 is a clear error naming the byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            pending = decoder.getstate()[0]  # a character cut by the previous block's end
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                where = offset - len(pending) + error.start
                raise InvalidInputError(
                    f"{path} is not UTF-8 text: byte {where} (0x{(pending + block)[error.start]:02x}) cannot "
                    f"be decoded ({error.reason}). Convert it first, e.g. `iconv -f latin1 -t utf-8 {path.name}`."
                ) from None
            if text:
                yield offset - len(pending), text
            if not block:
                return
            offset += len(block)


def _text_at(path: Path, start: int, count: int) -> str:
    """``count`` characters of ``path`` from byte ``start`` (a chunk's start, at most one chunk)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(CHUNK + 4)
    return codecs.getincrementaldecoder("utf-8")().decode(data)[:count]


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def encode_file(path: Path, out: Path, holdout: float) -> tuple[CharVocabulary, int, int]:
    """Encode ``path`` into the ``.npy`` id array ``out``; returns the vocabulary (of the first
    ``1 - holdout`` of the characters), the character count and where the held-out part starts.

    Two passes over the file, each holding one ``CHUNK`` at a time: the first counts characters
    and collects each chunk's character set, the second writes ids. Only when the chunk holding
    the split shows characters no earlier chunk did is its training part decoded again. Ids go
    out through plain writes rather than a writable memory map, so the process never holds the
    output's pages.
    """
    starts, lengths, charsets = [], [], []
    for start, text in _decoded_chunks(path):
        codes = _codes(text)
        starts.append(start)
        lengths.append(len(codes))
        present = np.unique(codes) if codes.max() >= 1 << 16 else np.flatnonzero(np.bincount(codes))
        charsets.append(set(present.tolist()))
    total = sum(lengths)
    split = total - int(round(total * holdout))
    seen, position = set(), 0
    for start, length, charset in zip(starts, lengths, charsets):
        if position + length <= split:
            seen |= charset
        elif position < split and not charset <= seen:
            seen |= set(np.unique(_codes(_text_at(path, start, split - position))).tolist())
        position += length
    vocabulary = CharVocabulary("".join(chr(c) for c in sorted(seen)))
    header = {"descr": np.lib.format.dtype_to_descr(vocabulary.dtype), "fortran_order": False, "shape": (total,)}
    with open(out, "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        for _, text in _decoded_chunks(path):
            f.write(vocabulary.encode_codes(_codes(text)).tobytes())
    return vocabulary, total, split


class Windows(Dataset):
    """``(input, target)`` pairs of ``seq_length`` ids starting at the offsets a sampler gives."""

    def __init__(self, ids: np.ndarray, start: int, stop: int, seq_length: int) -> None:
        self.ids, self.start, self.stop, self.seq_length = ids, start, stop, seq_length

    @property
    def positions(self) -> int:
        """How many offsets have a window and its one-character-later target inside [start, stop)."""
        return max(self.stop - self.start - self.seq_length, 0)

    def __len__(self) -> int:
        return self.positions

    def __getitem__(self, offset: int) -> tuple[Tensor, Tensor]:
        piece = torch.from_numpy(self.ids[self.start + offset: self.start + offset + self.seq_length + 1].astype(np.int64))
        return piece[:-1], piece[1:]


class RandomOffsets(ShardedSampler):
    """``num_samples`` random window offsets per epoch, drawn from ``seed`` and the epoch alone,
    so a resumed run sees the same windows; in a distributed run each process takes its share."""

    def __init__(self, positions: int, num_samples: int, seed: int = 0) -> None:
        super().__init__(shuffle=True, seed=seed)
        self.positions, self.num_samples = positions, num_samples

    def __len__(self) -> int:
        return -(-self.num_samples // self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(share(rng.integers(0, self.positions, self.num_samples).tolist(), *world()))


class EveryBlock(ShardedSampler):
    """All of :class:`Streams`' blocks in order, in every process (each reads its own streams)."""

    def __init__(self, blocks: int) -> None:
        super().__init__(shuffle=False, seed=0)
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.blocks))


class Streams(Dataset):
    """The validation text as ``batch_size`` contiguous streams read ``seq_length`` at a time.

    Item ``k`` is ``(index, input, target)``, the ``k``-th block of every stream, each ``(streams,
    seq_length)``; a model that carries its state from block ``k - 1`` to block ``k`` predicts
    every character of the text once, with all the context before it in its stream. In a
    distributed run each process reads every ``world``-th stream, so together they still read
    the text exactly once."""

    def __init__(self, ids: np.ndarray, start: int, stop: int, streams: int, seq_length: int) -> None:
        per_stream = (stop - start - 1) // streams
        if per_stream < 1:
            raise InvalidInputError(
                f"The validation part ({stop - start} characters) is too short for {streams} streams; "
                "lower data.batch_size or raise data.val_fraction."
            )
        self.ids, self.start, self.streams, self.per_stream, self.seq_length = ids, start, streams, per_stream, seq_length

    def __len__(self) -> int:
        return math.ceil(self.per_stream / self.seq_length)

    def __getitem__(self, index: int) -> tuple[int, Tensor, Tensor]:
        begin = index * self.seq_length
        end = min(begin + self.seq_length, self.per_stream)
        replicas, rank = world()
        rows = [self.ids[self.start + s * self.per_stream + begin: self.start + s * self.per_stream + end + 1]
                for s in range(rank, self.streams, replicas)]
        block = torch.from_numpy(np.stack(rows).astype(np.int64))
        return index, block[:, :-1], block[:, 1:]


class CharTextDataModule(L.LightningDataModule):
    """Characters of a UTF-8 text file, for next-character prediction.

    Data: ``path`` (a file or an http(s) URL); default ``<data_dir>/tinyshakespeare/input.txt``,
    downloaded from karpathy/char-rnn's copy when missing and online. The text is cut in three
    contiguous parts: the first ``1 - val_fraction - test_fraction`` of the characters train, then
    validation, then test. The vocabulary (``preprocessor``, a
    :class:`~seqmodels.preprocessing.CharVocabulary`) is the training part's sorted characters plus
    an unknown symbol (id 0) for characters seen only later.

    The text is encoded once (two streaming passes, memory bounded) into a ``.npy`` array of
    uint8 or uint16 ids in ``cache_dir``, keyed by the file's path, size and modification time,
    and memory-mapped: a corpus of hundreds of MB trains in bounded memory.

    Training: ``samples_per_epoch`` windows of ``seq_length`` at random offsets each epoch
    (seeded by ``seed`` and the epoch). Validation and test read their part once as
    ``batch_size`` contiguous streams (:class:`Streams`); the model carries its state along them.

    ``predict`` yields ``prompt`` (default: a newline, or the vocabulary's first character if
    the text has no newline), from which the model generates text; it needs no text file when
    the vocabulary came from a checkpoint.
    """

    preprocessor_type = CharVocabulary

    def __init__(self, path: str | None = None, data_dir: str | None = None, seq_length: int = 128,
                 batch_size: int = 64, samples_per_epoch: int = 12_800, val_fraction: float = 0.05,
                 test_fraction: float = 0.05, seed: int = 0, prompt: str | None = None, cache_dir: str | None = None,
                 num_workers: int = 0) -> None:
        super().__init__()
        if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise InvalidInputError(
                f"val_fraction must lie in (0, 1), test_fraction in [0, 1) and their sum below 1, got "
                f"{val_fraction} and {test_fraction}."
            )
        if seq_length < 1 or batch_size < 1 or samples_per_epoch < 1:
            raise InvalidInputError(
                "seq_length, batch_size and samples_per_epoch must be positive, got "
                f"{seq_length}, {batch_size} and {samples_per_epoch}."
            )
        self.save_hyperparameters()
        self.preprocessor: CharVocabulary | None = None
        self.ids: np.ndarray | None = None
        self.split = self.test_start = 0

    @property
    def vocab_size(self) -> int:
        """Rows of the model's embedding table (linked to ``model.vocab_size``): the vocabulary's size,
        read from the text (:meth:`setup` runs here) unless a checkpoint brought the vocabulary."""
        if self.preprocessor is None:
            self.setup("fit")
        return len(self.preprocessor)

    def _source(self) -> Path:
        path = self.hparams.path
        if path and str(path).startswith(("http://", "https://")):
            name = Path(str(path).split("?")[0]).name or "text.txt"
            digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
            return fetch(cache_dir(self.hparams.cache_dir) / "downloads" / f"{digest}-{name}", path, f"The text at {path}")
        if path:
            file = Path(path)
            if not file.is_file():
                raise MissingInputError(f"data.path {file} does not exist. Give a UTF-8 text file (or an http(s) URL).")
            return file
        return fetch(data_dir(self.hparams.data_dir) / "tinyshakespeare" / "input.txt", SHAKESPEARE_URL, "Tiny Shakespeare")

    def prepare_data(self) -> None:
        if self.trainer is None or self.trainer.state.fn != "predict":
            self._encoded()

    @property
    def _holdout(self) -> float:
        return self.hparams.val_fraction + self.hparams.test_fraction

    def _encoded(self) -> tuple[Path, dict]:
        """The cached id array and its metadata, encoding the file if needed."""
        source = self._source().resolve()
        stat = source.stat()
        if stat.st_size == 0:
            raise InvalidInputError(f"{source} is empty: a character model needs text to learn from.")
        key = hashlib.sha256(json.dumps([str(source), stat.st_size, stat.st_mtime_ns,
                                         self._holdout]).encode()).hexdigest()[:16]
        folder = cache_dir(self.hparams.cache_dir) / "chartext"
        array, meta_file = folder / f"{source.stem}-{key}.npy", folder / f"{source.stem}-{key}.json"
        if meta_file.is_file() and array.is_file():
            return array, json.loads(meta_file.read_text(encoding="utf-8"))
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(array) as partial:
            vocabulary, total, split = encode_file(source, partial, self._holdout)
        meta = {"source": str(source), "chars": vocabulary.chars, "length": total, "split": split}
        # Written last: its presence means the array is complete.
        atomic_write(meta_file, lambda f: f.write(json.dumps(meta, ensure_ascii=False)))
        return array, meta

    def setup(self, stage: str) -> None:
        if stage == "predict" and self.preprocessor is not None:
            return  # generation needs the vocabulary only, not the text
        if self.ids is not None:
            return
        array, meta = self._encoded()
        fitted = CharVocabulary(meta["chars"])
        if self.preprocessor is None:
            self.preprocessor = fitted
        elif self.preprocessor != fitted:
            print("The vocabulary comes from the checkpoint; characters it lacks read as the unknown symbol.")
        self.ids = np.load(array, mmap_mode="r")
        if self.preprocessor != fitted:  # the cache's ids -> the checkpoint's ids, one table lookup
            self.ids = self.preprocessor.encode_codes(_codes(fitted.chars))[self.ids]
        self.split = meta["split"]
        total = len(self.ids)
        self.test_start = total - int(round(total * self.hparams.test_fraction))
        need = self.hparams.seq_length + 1
        parts = [("training", self.split), ("validation", self.test_start - self.split)]
        if self.hparams.test_fraction:
            parts.append(("test", total - self.test_start))
        for part, size in parts:
            if size < need:
                raise InvalidInputError(
                    f"The {part} part of {meta['source']} has {size} characters, fewer than one window of "
                    f"seq_length + 1 = {need}. Use a longer text, a smaller data.seq_length, or other "
                    f"data.val_fraction / data.test_fraction (now {self.hparams.val_fraction} / "
                    f"{self.hparams.test_fraction}).")

    def train_dataloader(self) -> DataLoader:
        windows = Windows(self.ids, 0, self.split, self.hparams.seq_length)
        sampler = RandomOffsets(windows.positions, self.hparams.samples_per_epoch, self.hparams.seed)
        return DataLoader(windows, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def _streams(self, start: int, stop: int) -> DataLoader:
        streams = Streams(self.ids, start, stop, self.hparams.batch_size, self.hparams.seq_length)
        return DataLoader(streams, batch_size=None, sampler=EveryBlock(len(streams)))

    def val_dataloader(self) -> DataLoader:
        return self._streams(self.split, self.test_start)

    def test_dataloader(self) -> DataLoader:
        if not self.hparams.test_fraction:
            raise InvalidInputError("This text has no test part: data.test_fraction is 0. Set it (e.g. 0.05) and "
                                    "retrain, since the training part must not overlap it.")
        return self._streams(self.test_start, len(self.ids))

    def predict_dataloader(self) -> DataLoader:
        prompt = self.hparams.prompt
        return DataLoader([self.preprocessor.default_prompt() if prompt is None else prompt], batch_size=None)

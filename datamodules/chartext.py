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

from datamodules.paths import cache_dir, data_dir, fetch, private_partial
from datamodules.sharding import ShardedSampler, share, world
from seqmodels.errors import InvalidInputError, MissingInputError

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
UNKNOWN = "\ufffd"  # id 0: characters the training part never shows
CHUNK = 1 << 22  # bytes decoded at a time: memory stays bounded whatever the file size


class Vocabulary:
    """Characters <-> ids. Id 0 is the unknown symbol; then the training text's characters, sorted."""

    def __init__(self, chars: str) -> None:
        self.chars = chars if chars.startswith(UNKNOWN) else UNKNOWN + chars.replace(UNKNOWN, "")
        codes = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)
        # Code point -> id, in the ids' own dtype; the extra last entry (0, unknown) stands for every
        # code point beyond the largest known one.
        self._table = np.zeros(int(codes.max()) + 2, dtype=self.dtype)
        self._table[codes] = np.arange(len(codes))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if len(self) <= 256 else np.uint16 if len(self) <= 65536 else np.uint32)

    def encode_codes(self, codes: np.ndarray) -> np.ndarray:
        """Unicode code points -> ids (unknown characters -> 0)."""
        return self._table[np.minimum(codes, len(self._table) - 1)]

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, 0) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def unknown(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.index or c == UNKNOWN})


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


def encode_file(path: Path, out: Path, val_fraction: float) -> tuple[Vocabulary, int, int]:
    """Encode ``path`` into the ``.npy`` id array ``out``; returns the vocabulary, the character
    count and where validation starts.

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
    split = total - int(round(total * val_fraction))
    seen, position = set(), 0
    for start, length, charset in zip(starts, lengths, charsets):
        if position + length <= split:
            seen |= charset
        elif position < split and not charset <= seen:
            seen |= set(np.unique(_codes(_text_at(path, start, split - position))).tolist())
        position += length
    vocabulary = Vocabulary("".join(chr(c) for c in sorted(seen)))
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
    downloaded from karpathy/char-rnn's copy when missing and online. The first
    ``1 - val_fraction`` of the characters train, the rest validate (the contiguous 90/10 split
    the published Tiny Shakespeare numbers use). The vocabulary is the training part's sorted
    characters plus an unknown symbol (id 0) for characters seen only later.

    The text is encoded once (two streaming passes, memory bounded) into a ``.npy`` array of
    uint8 or uint16 ids in ``cache_dir``, keyed by the file's path, size and modification time,
    and memory-mapped: a corpus of hundreds of MB trains in bounded memory.

    Training: ``samples_per_epoch`` windows of ``seq_length`` at random offsets each epoch
    (seeded by ``seed`` and the epoch). Validation reads the whole validation part once as
    ``batch_size`` contiguous streams (:class:`Streams`); the model carries its state along them.

    ``predict`` yields ``prompt``, from which the model generates text.
    """

    def __init__(self, path: str | None = None, data_dir: str | None = None, seq_length: int = 128,
                 batch_size: int = 64, samples_per_epoch: int = 12_800, val_fraction: float = 0.1,
                 seed: int = 0, prompt: str = "\n", cache_dir: str | None = None, num_workers: int = 0) -> None:
        super().__init__()
        if not 0 < val_fraction < 1:
            raise InvalidInputError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}.")
        if seq_length < 1 or batch_size < 1 or samples_per_epoch < 1:
            raise InvalidInputError(
                "seq_length, batch_size and samples_per_epoch must be positive, got "
                f"{seq_length}, {batch_size} and {samples_per_epoch}."
            )
        self.save_hyperparameters()
        self.vocabulary: Vocabulary | None = None
        self.ids: np.ndarray | None = None
        self.split = 0

    @property
    def vocab_size(self) -> int:
        """Rows of the model's embedding table (linked to ``model.vocab_size``): the vocabulary
        needs the data, so :meth:`setup` runs here if it has not yet."""
        if self.vocabulary is None:
            self.setup("fit")
        return len(self.vocabulary)

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
        self._encoded()

    def _encoded(self) -> tuple[Path, dict]:
        """The cached id array and its metadata, encoding the file if needed."""
        source = self._source().resolve()
        stat = source.stat()
        if stat.st_size == 0:
            raise InvalidInputError(f"{source} is empty: a character model needs text to learn from.")
        key = hashlib.sha256(json.dumps([str(source), stat.st_size, stat.st_mtime_ns,
                                         self.hparams.val_fraction]).encode()).hexdigest()[:16]
        folder = cache_dir(self.hparams.cache_dir) / "chartext"
        array, meta_file = folder / f"{source.stem}-{key}.npy", folder / f"{source.stem}-{key}.json"
        if meta_file.is_file() and array.is_file():
            return array, json.loads(meta_file.read_text(encoding="utf-8"))
        folder.mkdir(parents=True, exist_ok=True)
        partial = private_partial(array)
        vocabulary, total, split = encode_file(source, partial, self.hparams.val_fraction)
        partial.replace(array)
        meta = {"source": str(source), "chars": vocabulary.chars, "length": total, "split": split}
        meta_partial = private_partial(meta_file)
        meta_partial.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        meta_partial.replace(meta_file)  # written last: its presence means the array is complete
        return array, meta

    def setup(self, stage: str) -> None:
        if self.ids is not None:
            return
        array, meta = self._encoded()
        self.vocabulary = Vocabulary(meta["chars"])
        self.ids = np.load(array, mmap_mode="r")
        self.split = meta["split"]
        need = self.hparams.seq_length + 1
        for part, size in (("training", self.split), ("validation", len(self.ids) - self.split)):
            if size < need:
                raise InvalidInputError(
                    f"The {part} part of {meta['source']} has {size} characters, fewer than one window of "
                    f"seq_length + 1 = {need}. Use a longer text, a smaller data.seq_length, or another "
                    f"data.val_fraction (now {self.hparams.val_fraction}).")

    def train_dataloader(self) -> DataLoader:
        windows = Windows(self.ids, 0, self.split, self.hparams.seq_length)
        sampler = RandomOffsets(windows.positions, self.hparams.samples_per_epoch, self.hparams.seed)
        return DataLoader(windows, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        streams = Streams(self.ids, self.split, len(self.ids), self.hparams.batch_size, self.hparams.seq_length)
        return DataLoader(streams, batch_size=None, sampler=EveryBlock(len(streams)))

    def predict_dataloader(self) -> DataLoader:
        return DataLoader([self.hparams.prompt], batch_size=None)

    def state_dict(self) -> dict:
        return {"chars": self.vocabulary.chars} if self.vocabulary is not None else {}

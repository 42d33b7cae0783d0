"""IMDB movie reviews (Maas et al., 2011): 25k train / 25k test, positive or negative."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.paths import cache_dir, data_dir
from datamodules.sharding import ShardedSampler, share, world
from seqmodels.errors import InvalidInputError, MissingInputError
from seqmodels.files import atomic_write
from seqmodels.preprocessing import WordTokenizer

if TYPE_CHECKING:
    import pyarrow as pa

HUB_NAME = "stanfordnlp/imdb"


# Part of the encoded splits' cache key: a cache written in another layout is not read.
_ENCODED_FORMAT = "input_ids: list<int32>"


class _Encoder:
    """Encodes a batch for ``datasets.map`` in Arrow format: whole reviews, untruncated (picklable,
    so ``map`` may use worker processes). It returns an Arrow table, which ``map`` writes as it is;
    given Python lists, ``map`` converted and type-checked the 11.5 million ids itself, and the cold
    tokenise + encode of the 50k reviews took 5.5-5.8 s instead of 5.0-5.2. The ids come flat, with
    offsets, as Arrow's list arrays hold them: no Python list a review."""

    def __init__(self, tokenizer: WordTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        ids, offsets = self.tokenizer.encode_flat(batch.column("text").to_pylist())
        column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids))
        return batch.drop_columns(["text"]).append_column("input_ids", column)


class EncodedReviews(Dataset):
    """Encoded reviews held as one flat id array and offsets (zero-copy from Arrow)."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, labels: np.ndarray,
                 texts: list[str] | None = None) -> None:
        self.ids, self.offsets, self.labels, self.texts = ids, offsets, labels, texts
        self.lengths = np.diff(offsets)

    @classmethod
    def from_lists(cls, ids: list[list[int]], texts: list[str]) -> EncodedReviews:
        """Reviews to predict: no labels (-1), their texts kept for the output."""
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum([len(i) for i in ids], out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(offsets[-1]))
        return cls(flat, offsets, np.full(len(ids), -1, dtype=np.int64), texts)

    @classmethod
    def from_arrow(cls, dataset) -> EncodedReviews:
        column = dataset.data.column("input_ids").combine_chunks()
        # A sliced ListArray's offsets need not start at 0; values() is the whole child array.
        offsets = column.offsets.to_numpy()
        ids = column.values.to_numpy()
        labels = np.asarray(dataset.data.column("label").to_numpy(), dtype=np.int64)
        return cls(ids, offsets, labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple:
        ids = self.ids[self.offsets[index]: self.offsets[index + 1]]
        if self.texts is None:
            return ids, int(self.labels[index])
        return ids, int(self.labels[index]), index, self.texts[index]


class BucketSampler(ShardedSampler):
    """Indices in an order whose consecutive ``batch_size`` runs have similar lengths.

    Each epoch: shuffle, cut into pools of ``pool_batches`` batches, sort each pool by length,
    cut the pools into batches and shuffle the batches (the one short batch goes last).
    The order depends only on ``seed`` and the epoch (:meth:`set_epoch`, which Lightning calls),
    so a resumed run sees the same data order. ``shuffle=False`` sorts the whole set instead
    (evaluation: least padding, fixed order).

    In a distributed run each process takes every ``world``-th batch (training) or review
    (evaluation), padded by wrap-around to equal counts.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, shuffle: bool = True, seed: int = 0,
                 pool_batches: int = 50) -> None:
        super().__init__(shuffle, seed)
        self.lengths, self.batch_size = np.asarray(lengths), batch_size
        self.pool = batch_size * pool_batches

    def __len__(self) -> int:
        return sum(1 for _ in self)  # cheap enough, and exact per rank

    def __iter__(self) -> Iterator[int]:
        replicas, rank = world()
        if not self.shuffle:
            return iter(share(np.argsort(self.lengths, kind="stable").tolist(), replicas, rank))
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start: start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches.extend(pool[i: i + self.batch_size] for i in range(0, len(pool), self.batch_size))
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        full = [full[i] for i in rng.permutation(len(full))]
        batches = share(full + short, replicas, rank)
        return iter(np.concatenate(batches).tolist() if batches else [])


class Collate:
    """Items of :class:`EncodedReviews` -> ``{"input_ids", ["lengths",] "labels"}`` (plus ``"index"``
    and ``"text"`` for reviews to predict), truncated and padded by the tokenizer: the one way a
    review is read (see :class:`~seqmodels.preprocessing.WordTokenizer`)."""

    def __init__(self, tokenizer: WordTokenizer, training: bool) -> None:
        self.tokenizer, self.training = tokenizer, training

    def __call__(self, items: list[tuple]) -> dict:
        batch = self.tokenizer.collate([item[0] for item in items], self.training)
        batch["labels"] = torch.tensor([item[1] for item in items])
        if len(items[0]) > 2:
            batch["index"] = torch.tensor([item[2] for item in items])
            batch["text"] = [item[3] for item in items]
        return batch


class IMDBDataModule(L.LightningDataModule):
    """The Large Movie Review Dataset, read through ``datasets`` and tokenised by ``tokenizers``.

    Data: ``<data_dir>/imdb`` in the hub's parquet layout when present (read offline), else
    ``stanfordnlp/imdb`` from the Hugging Face hub. Official 25k train / 25k test splits;
    ``val_size`` reviews of train, chosen with ``seed``, form the validation set; ``seed``
    also fixes the order of training batches in each epoch.

    ``preprocessor`` is a :class:`~seqmodels.preprocessing.WordTokenizer` (lowercase, ``<br />``
    stripped, NFKC, punctuation split; ``[PAD]`` = 0, ``[UNK]`` = 1) trained on the training part
    only, or the one a checkpoint brought. Its reading settings are this module's: ``max_length``
    tokens in training, ``eval_max_length`` (``null``: whole reviews) in validation, test and
    predict, ``truncation_side`` and ``padding_side``. The whole reviews are encoded once with
    ``datasets.map``; the tokenizer is cached in ``cache_dir`` (see :mod:`datamodules.paths`),
    keyed by the data's fingerprint, the split and ``vocab_size``, and the encodings in
    ``datasets``' own cache, keyed by the tokenizer.

    Batches are length-bucketed (:class:`BucketSampler`) and padded per batch; evaluation and
    predict batches are sorted by length. For ``predict``, ``predict_path`` is a text file with
    one review per line, or a ``.jsonl`` file of objects with a ``text`` field; predictions are
    written back in the file's order.
    """

    preprocessor_type = WordTokenizer

    def __init__(self, data_dir: str | None = None, vocab_size: int = 30_000, max_length: int | None = 400,
                 eval_max_length: int | None = 400, padding_side: Literal["right", "left"] = "right",
                 truncation_side: Literal["right", "left"] = "right", val_size: int = 2_500,
                 seed: int = 0, batch_size: int = 64, min_frequency: int = 1,
                 predict_path: str | None = None, cache_dir: str | None = None) -> None:
        super().__init__()
        if vocab_size < 3:
            raise InvalidInputError(f"vocab_size must be at least 3 ([PAD], [UNK] and a word), got {vocab_size}.")
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be positive, got {batch_size}.")
        self.save_hyperparameters()
        WordTokenizer("", **self._reading())  # refuse bad reading settings now, before any data is read
        self._preprocessor: WordTokenizer | None = None
        self.datasets: dict[str, EncodedReviews] = {}

    def _reading(self) -> dict:
        keys = ("max_length", "eval_max_length", "padding_side", "truncation_side")
        return {key: self.hparams[key] for key in keys}

    @property
    def preprocessor(self) -> WordTokenizer | None:
        return self._preprocessor

    @preprocessor.setter
    def preprocessor(self, tokenizer: WordTokenizer | None) -> None:
        """A tokenizer from a checkpoint: its vocabulary, read with this module's settings."""
        if tokenizer is not None:
            for key, value in self._reading().items():
                setattr(tokenizer, key, value)
        self._preprocessor = tokenizer

    @property
    def vocab_size(self) -> int:
        """The size of the embedding table the model needs (linked to ``model.vocab_size``)."""
        return self.hparams.vocab_size

    # -- loading ----------------------------------------------------------------------------

    def _local_dir(self) -> Path:
        return data_dir(self.hparams.data_dir) / "imdb"

    def _load_raw(self):
        import datasets

        local = self._local_dir()
        if local.is_dir():
            try:
                raw = datasets.load_dataset("parquet", data_files=local_parquet_files(local))
            except Exception as error:  # mismatched columns across files, unreadable parquet, ...
                cause = error.__cause__ or error
                raise InvalidInputError(
                    f"Could not read the IMDB data at {local}: {type(cause).__name__}: "
                    f"{' '.join(str(cause).split())[:300]}. Expected the hub's parquet layout: "
                    "plain_text/train-*.parquet and plain_text/test-*.parquet, each with a string column "
                    "'text' and an integer column 'label'."
                ) from None
        else:
            try:
                raw = datasets.load_dataset(HUB_NAME)
            except Exception as error:  # offline, hub down, no such dataset: one clear message
                raise MissingInputError(
                    f"IMDB data was not found at {local} and could not be loaded from the Hugging Face hub "
                    f"({HUB_NAME}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
                    f"Put the dataset there in the hub's parquet layout (plain_text/train-*.parquet and "
                    f"plain_text/test-*.parquet, with columns text and label), or point SEQMODELS_DATA_DIR "
                    f"(or data.data_dir) at a directory holding imdb/."
                ) from None
        where = local if local.is_dir() else HUB_NAME
        for split in ("train", "test"):
            if split not in raw:
                raise InvalidInputError(
                    f"IMDB data at {where} has no '{split}' split (found {sorted(raw)}). "
                    "Expected plain_text/train-*.parquet and plain_text/test-*.parquet."
                )
            missing = {"text", "label"} - set(raw[split].column_names)
            if missing:
                raise InvalidInputError(
                    f"IMDB data at {where}: the {split} split lacks column(s) {sorted(missing)} "
                    f"(it has {raw[split].column_names}). Each parquet file needs a string column "
                    "'text' and an integer column 'label' (0 negative, 1 positive)."
                )
            labels = set(raw[split].unique("label"))
            if not labels <= {0, 1}:
                raise InvalidInputError(
                    f"IMDB data at {where}: the {split} split has labels {sorted(labels)}; "
                    "expected only 0 (negative) and 1 (positive)."
                )
        return raw

    def _split(self, train):
        n = len(train)
        if not 0 < self.hparams.val_size < n:
            raise InvalidInputError(
                f"val_size must lie in [1, {n - 1}] (the training split has {n} reviews), "
                f"got {self.hparams.val_size}."
            )
        order = np.random.default_rng(self.hparams.seed).permutation(n)
        val_index = np.sort(order[: self.hparams.val_size])
        train_index = np.sort(order[self.hparams.val_size:])
        return train.select(train_index), train.select(val_index)

    def prepare_data(self) -> None:
        if self.trainer is None or self.trainer.state.fn != "predict":
            self._prepare()

    def _prepare(self):
        """Load, split, fit (or load the cached) tokenizer unless one was given, encode (cached). Idempotent."""
        import datasets

        quiet = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # Lightning's own progress bar is the one to watch
        try:
            return self._load_and_encode()
        finally:
            if quiet:
                datasets.enable_progress_bars()

    def _fitted_tokenizer(self, train) -> WordTokenizer:
        key = hashlib.sha256(json.dumps(
            [train._fingerprint, self.hparams.vocab_size, self.hparams.min_frequency]).encode()).hexdigest()[:16]
        tokenizer_file = cache_dir(self.hparams.cache_dir) / f"imdb-tokenizer-{key}.json"
        if tokenizer_file.is_file():
            return WordTokenizer(tokenizer_file.read_text(encoding="utf-8"), **self._reading())
        # All texts through Arrow at once: iterating datasets' lazy column fetches them one row at a
        # time, 0.36 s against 0.05 s for the 22,500 training reviews.
        texts = train.with_format("arrow")[:]["text"].to_pylist()
        tokenizer = WordTokenizer.fit(texts, self.hparams.vocab_size, self.hparams.min_frequency,
                                      **self._reading())
        tokenizer_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(tokenizer_file, lambda f: f.write(tokenizer.tokenizer_json))
        return tokenizer

    def _load_and_encode(self):
        raw = self._load_raw()
        train, val = self._split(raw["train"])
        tokenizer = self._preprocessor or self._fitted_tokenizer(train)
        key = hashlib.sha256(tokenizer.tokenizer_json.encode()).hexdigest()[:16]
        encoder = _Encoder(tokenizer)
        encoded = {}
        for name, split in (("train", train), ("val", val), ("test", raw["test"])):
            fingerprint = hashlib.sha256(f"{split._fingerprint}{key}{_ENCODED_FORMAT}".encode()).hexdigest()[:16]
            encoded[name] = split.with_format("arrow").map(encoder, batched=True, batch_size=1000,
                                                           remove_columns=["text"], new_fingerprint=fingerprint,
                                                           desc=None)
        return tokenizer, encoded

    def setup(self, stage: str) -> None:
        if stage == "predict":
            texts = read_reviews(self.hparams.predict_path)
            if self._preprocessor is None:  # predict without a checkpoint: the training split's tokenizer
                self.preprocessor = self._prepare()[0]
            self.datasets["predict"] = EncodedReviews.from_lists(self._preprocessor.encode(texts), texts)
            return
        if "train" in self.datasets:
            return
        tokenizer, encoded = self._prepare()
        if self._preprocessor is None:
            self.preprocessor = tokenizer
        self.datasets.update({name: EncodedReviews.from_arrow(split) for name, split in encoded.items()})

    # -- loaders ----------------------------------------------------------------------------

    def _loader(self, name: str, training: bool) -> DataLoader:
        dataset = self.datasets[name]
        limit = self._preprocessor.length_limit(training)
        lengths = dataset.lengths if limit is None else np.minimum(dataset.lengths, limit)
        sampler = BucketSampler(lengths, self.hparams.batch_size, shuffle=training, seed=self.hparams.seed)
        return DataLoader(dataset, batch_size=self.hparams.batch_size, sampler=sampler,
                          collate_fn=Collate(self._preprocessor, training))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", training=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", training=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", training=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", training=False)


def read_reviews(path: str | None) -> list[str]:
    """Reviews to classify: one per line of a text file, or the ``text`` of each line of a JSONL file."""
    if not path:
        raise InvalidInputError(
            "predict needs reviews: set data.predict_path to a text file (one review per line) "
            "or a .jsonl file of {\"text\": ...} objects."
        )
    file = Path(path)
    if not file.is_file():
        raise MissingInputError(f"data.predict_path {file} does not exist. Give a text file with one review per "
                                "line, or a .jsonl file of {\"text\": ...} objects.")
    # Lines end at "\n" (or "\r\n") only: str.splitlines() would also cut a review at U+2028 or \x85.
    lines = file.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if file.suffix != ".jsonl":
        return lines
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            texts.append(record["text"] if isinstance(record, dict) else record)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InvalidInputError(
                f"{file}, line {number}: expected a JSON object with a \"text\" field, got "
                f"{line[:80]!r}."
            ) from None
        if not isinstance(texts[-1], str):
            raise InvalidInputError(
                f"{file}, line {number}: \"text\" must be a string, got {type(texts[-1]).__name__}."
            )
    return texts


def local_parquet_files(folder: Path) -> dict[str, list[str]]:
    """The parquet files of each split under ``folder`` (``<split>-*.parquet``, any depth), by absolute path.

    Named explicitly because ``datasets`` caches a local folder by its name and its card's file
    patterns: two folders called ``imdb`` with the same card (the full data and a small copy) would
    share one cache entry, and the second would silently read the first's reviews.
    """
    files = {split: sorted(str(p.resolve()) for p in folder.rglob(f"{split}-*.parquet"))
             for split in ("train", "test", "unsupervised")}
    return {split: found for split, found in files.items() if found}

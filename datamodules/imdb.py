"""IMDB movie reviews (Maas et al., 2011): 25k train / 25k test, positive or negative."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.paths import cache_dir, data_dir, private_partial
from datamodules.sharding import ShardedSampler, share, world
from seqmodels.errors import InvalidInputError, MissingInputError

HUB_NAME = "stanfordnlp/imdb"
PAD, UNK = "[PAD]", "[UNK]"


def normalize(text: str) -> str:
    """The tokenizer's normalisation, done by Python's C string methods (3x faster in bulk):
    drop the ``<br />`` markup, unicode NFKC, lowercase."""
    return unicodedata.normalize("NFKC", text.replace("<br />", " ")).lower()


def build_tokenizer(texts: Iterator[str] | Sequence[str], vocab_size: int, min_frequency: int = 1):
    """A word-level ``tokenizers.Tokenizer`` fitted on ``texts``: ``[PAD]`` is id 0, ``[UNK]`` id 1,
    then words by frequency; punctuation runs are tokens of their own."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=[PAD, UNK], show_progress=False)
    tokenizer.train_from_iterator((normalize(t) for t in texts), trainer)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Replace("<br />", " "), normalizers.NFKC(), normalizers.Lowercase()])
    return tokenizer


class _Encoder:
    """Encodes a batch for ``datasets.map`` (picklable, so ``map`` may use worker processes).

    It normalises in Python and runs the tokenizer without its normaliser: the same ids as
    ``tokenizer.encode`` (a test checks), in a third of the time."""

    def __init__(self, tokenizer_json: str) -> None:
        self.tokenizer_json = tokenizer_json
        self._bare = None

    def __call__(self, batch: dict) -> dict:
        from tokenizers import Tokenizer

        if self._bare is None:
            self._bare = Tokenizer.from_str(self.tokenizer_json)
            self._bare.normalizer = None
        ids = [e.ids for e in self._bare.encode_batch_fast([normalize(t) for t in batch["text"]])]
        return {"input_ids": ids, "length": [len(i) for i in ids]}


class EncodedReviews(Dataset):
    """Encoded reviews held as one flat id array and offsets (zero-copy from Arrow)."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> None:
        self.ids, self.offsets, self.labels = ids, offsets, labels
        self.lengths = np.diff(offsets)

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

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.ids[self.offsets[index]: self.offsets[index + 1]], int(self.labels[index])


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
    """Pads a list of ``(ids, label)`` into ``{"input_ids", "lengths", "labels"}``.

    ``padding_side="right"`` pads each batch only to its longest review and passes the lengths,
    so the backbone never reads padding. ``"left"`` is the classic Keras recipe: every review
    padded at the front to ``max_length``, no lengths, and the network reads the padding.
    ``truncation_side`` says which end of a long review is cut: ``"right"`` keeps the first
    ``max_length`` tokens, ``"left"`` the last.
    """

    def __init__(self, max_length: int, padding_side: str = "right", truncation_side: str = "right") -> None:
        self.max_length, self.padding_side, self.truncation_side = max_length, padding_side, truncation_side

    def __call__(self, items: list[tuple[np.ndarray, int]]) -> dict[str, Tensor]:
        sequences = [self.truncate(ids) for ids, _ in items]
        lengths = [max(len(s), 1) for s in sequences]  # an empty review reads as one [PAD]
        width = self.max_length if self.padding_side == "left" else max(lengths)
        input_ids = np.zeros((len(items), width), dtype=np.int64)
        for row, ids in enumerate(sequences):
            if len(ids):
                if self.padding_side == "left":
                    input_ids[row, width - len(ids):] = ids
                else:
                    input_ids[row, : len(ids)] = ids
        batch = {"input_ids": torch.from_numpy(input_ids), "labels": torch.tensor([label for _, label in items])}
        if self.padding_side == "right":
            batch["lengths"] = torch.tensor(lengths)
        return batch

    def truncate(self, ids: Sequence[int]) -> Sequence[int]:
        if len(ids) <= self.max_length:
            return ids
        return ids[-self.max_length:] if self.truncation_side == "left" else ids[: self.max_length]


class IMDBDataModule(L.LightningDataModule):
    """The Large Movie Review Dataset, read through ``datasets`` and tokenised by ``tokenizers``.

    Data: ``<data_dir>/imdb`` in the hub's parquet layout when present (read offline), else
    ``stanfordnlp/imdb`` from the Hugging Face hub. Official 25k train / 25k test splits;
    ``val_size`` reviews of train, chosen with ``seed``, form the validation set; ``seed``
    also fixes the order of training batches in each epoch.

    A word-level tokenizer (lowercase, ``<br />`` stripped, NFKC, punctuation split; ``[PAD]`` = 0,
    ``[UNK]`` = 1) is trained on the training part only, and the reviews are encoded once with
    ``datasets.map``. Both are cached, keyed by the data's fingerprint, the split and
    ``vocab_size``: the tokenizer in ``cache_dir`` (see :mod:`datamodules.paths`), the encodings
    in ``datasets``' own cache next to the data's Arrow files. The tokenizer is saved in the
    checkpoint (by the data module and by the :class:`~seqmodels.tasks.SequenceClassifier`) as a
    JSON string, so a checkpoint alone classifies raw text.

    Training batches are length-bucketed (:class:`BucketSampler`) and padded per batch.

    For ``predict``, ``predict_path`` is a text file with one review per line, or a ``.jsonl``
    file of objects with a ``text`` field; batches are raw strings, which the model tokenises.
    """

    def __init__(self, data_dir: str | None = None, vocab_size: int = 30_000, max_length: int = 400,
                 padding_side: Literal["right", "left"] = "right",
                 truncation_side: Literal["right", "left"] = "right", val_size: int = 2_500,
                 seed: int = 0, batch_size: int = 64, min_frequency: int = 1,
                 predict_path: str | None = None, cache_dir: str | None = None) -> None:
        super().__init__()
        if vocab_size < 3:
            raise InvalidInputError(f"vocab_size must be at least 3 ([PAD], [UNK] and a word), got {vocab_size}.")
        if max_length < 1 or batch_size < 1:
            raise InvalidInputError(f"max_length and batch_size must be positive, got {max_length} and {batch_size}.")
        self.save_hyperparameters()
        self.tokenizer = None
        self.datasets: dict[str, EncodedReviews] = {}
        self.predict_texts: list[str] = []

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
                raw = datasets.load_dataset(str(local))
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
        self._prepare()

    def _prepare(self):
        """Load, split, fit or load the cached tokenizer, encode (cached). Idempotent."""
        import datasets

        quiet = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # Lightning's own progress bar is the one to watch
        try:
            return self._load_and_encode()
        finally:
            if quiet:
                datasets.enable_progress_bars()

    def _load_and_encode(self):
        from tokenizers import Tokenizer

        raw = self._load_raw()
        train, val = self._split(raw["train"])
        key = hashlib.sha256(json.dumps(
            [train._fingerprint, self.hparams.vocab_size, self.hparams.min_frequency]).encode()).hexdigest()[:16]
        cache = cache_dir(self.hparams.cache_dir)
        tokenizer_file = cache / f"imdb-tokenizer-{key}.json"
        if tokenizer_file.is_file():
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        else:
            tokenizer = build_tokenizer(train["text"], self.hparams.vocab_size, self.hparams.min_frequency)
            cache.mkdir(parents=True, exist_ok=True)
            partial = private_partial(tokenizer_file)
            tokenizer.save(str(partial))
            partial.replace(tokenizer_file)
        encoder = _Encoder(tokenizer.to_str())
        encoded = {}
        for name, split in (("train", train), ("val", val), ("test", raw["test"])):
            encoded[name] = split.map(encoder, batched=True, batch_size=1000, remove_columns=["text"],
                                      new_fingerprint=hashlib.sha256(f"{split._fingerprint}{key}".encode()).hexdigest()[:16],
                                      desc=None)
        return tokenizer, encoded

    def setup(self, stage: str) -> None:
        if stage == "predict":
            self.predict_texts = read_reviews(self.hparams.predict_path)
            return
        if self.datasets:
            return
        self.tokenizer, encoded = self._prepare()
        self.datasets = {name: EncodedReviews.from_arrow(split) for name, split in encoded.items()}

    # -- loaders ----------------------------------------------------------------------------

    def _collate(self) -> Collate:
        return Collate(self.hparams.max_length, self.hparams.padding_side, self.hparams.truncation_side)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[name]
        lengths = np.minimum(dataset.lengths, self.hparams.max_length)
        sampler = BucketSampler(lengths, self.hparams.batch_size, shuffle=shuffle, seed=self.hparams.seed)
        return DataLoader(dataset, batch_size=self.hparams.batch_size, sampler=sampler, collate_fn=self._collate())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.predict_texts, batch_size=self.hparams.batch_size, collate_fn=list)

    # -- checkpoint -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"tokenizer": self.tokenizer.to_str()} if self.tokenizer is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if "tokenizer" in state_dict and self.tokenizer is None:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_str(state_dict["tokenizer"])


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
    lines = file.read_text(encoding="utf-8").splitlines()
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

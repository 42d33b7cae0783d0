"""What turns raw input into model input, fitted on training data and carried in checkpoints.

Three plain objects, one per task: :class:`WordTokenizer` (reviews -> padded id batches),
:class:`CharVocabulary` (text <-> character ids) and :class:`SeriesTransform` (raw values <->
standardised, differenced values). A data module builds and fits one on its training split; the
CLI hands the same object to the task (:class:`seqmodels.callbacks.PreprocessingHandoff`), which
saves it in every checkpoint as plain data (``state_dict()``), so a checkpoint alone turns raw
input into predictions and loads with ``torch.load(..., weights_only=True)``.

Nothing here knows Lightning, a data module or a task.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import itertools
import logging
import unicodedata
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from seqmodels.errors import InvalidInputError

log = logging.getLogger(__name__)

Side = Literal["right", "left"]


@runtime_checkable
class Preprocessor(Protocol):
    def state_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class ProvidesPreprocessor(Protocol):
    """What a data module declares to the CLI: the object it fitted (or was given)."""

    preprocessor: Preprocessor | None


# -- words ------------------------------------------------------------------------------------

PAD, UNK = "[PAD]", "[UNK]"


def normalize(text: str) -> str:
    """The tokenizer's normalisation, done by Python's C string methods (3x faster in bulk than the
    tokenizer's own normaliser): drop the ``<br />`` markup, unicode NFKC, lowercase."""
    return unicodedata.normalize("NFKC", text.replace("<br />", " ")).lower()


class _WordTable:
    """``words.c``'s table of byte strings: a vocabulary's ids, or word counts while fitting one."""

    def __init__(self, lib, vocabulary: dict[str, int] | None = None) -> None:
        self._lib, self._handle = lib, lib.table_new()
        if not self._handle:
            raise MemoryError("words.c could not allocate its table")
        weakref.finalize(self, lib.table_free, self._handle)
        if vocabulary:
            strings, bounds = _joined([word.encode("utf-8", "surrogatepass") for word in vocabulary])
            values = np.fromiter(vocabulary.values(), dtype=np.int64, count=len(vocabulary))
            if not lib.table_put(self._handle, len(vocabulary), strings, bounds.ctypes.data, values.ctypes.data):
                raise MemoryError("words.c ran out of memory for the vocabulary")

    def encode(self, texts: Sequence[bytes], unknown: int) -> tuple[np.ndarray, np.ndarray]:
        """UTF-8 texts -> their ids one after another, and where each text's ids end."""
        buffer, bounds = _joined(texts)
        ids, ends = np.empty(len(buffer), dtype=np.int32), np.empty(len(texts), dtype=np.int64)
        count = self._lib.table_encode(self._handle, _character_classes().table.ctypes.data, len(texts), buffer,
                                       bounds.ctypes.data, unknown, ids.ctypes.data, ends.ctypes.data)
        return ids[:count], ends

    def count(self, texts: Sequence[bytes]) -> dict[str, int]:
        """The words of UTF-8 texts, counted (added to what the table counted before)."""
        buffer, bounds = _joined(texts)
        if not self._lib.table_count(self._handle, _character_classes().table.ctypes.data, len(texts), buffer,
                                     bounds.ctypes.data):
            raise MemoryError("words.c ran out of memory counting words")
        size, length = self._lib.table_size(self._handle), self._lib.table_bytes(self._handle)
        strings = ctypes.create_string_buffer(max(length, 1))
        offsets, counts = np.empty(size + 1, dtype=np.int64), np.empty(size, dtype=np.int64)
        self._lib.table_dump(self._handle, strings, offsets.ctypes.data, counts.ctypes.data)
        raw = strings.raw
        return {raw[a:b].decode(): n for a, b, n in zip(offsets[:-1].tolist(), offsets[1:].tolist(), counts.tolist())}


def _joined(parts: Sequence[bytes]) -> tuple[bytes, np.ndarray]:
    bounds = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=bounds[1:])
    return b"".join(parts), bounds


def _utf8(text: str) -> bytes | None:
    """``text`` in UTF-8, None if it cannot be (a lone surrogate): such a text goes to the library."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return None


class _CharacterClasses:
    """Every code point's class for ``words.c`` (0 whitespace, 1 a word character, 2 anything else, 255
    not learnt yet), each learnt from the ``tokenizers`` library's Whitespace pre-tokenizer itself: it
    splits "a" + c + "a" into one word, two, or three. Learnt for ASCII at once, for other characters
    when a text first shows them (IMDB's 50k reviews hold about 300)."""

    def __init__(self) -> None:
        from tokenizers import pre_tokenizers

        self._split = pre_tokenizers.Whitespace()
        self.table = np.full(0x110000, 255, dtype=np.uint8)
        self.learn(["".join(map(chr, range(128)))])

    def learn(self, texts: Iterable[str]) -> None:
        for char in set().union(*texts):
            code = ord(char)
            if self.table[code] == 255:
                self.table[code] = {1: 1, 2: 0}.get(len(self._split.pre_tokenize_str(f"a{char}a")), 2)


@functools.cache
def _character_classes() -> _CharacterClasses:
    return _CharacterClasses()


@functools.cache
def _compiled_words():
    """``words.c`` where it builds and splits words as the ``tokenizers`` library's Whitespace
    pre-tokenizer does (checked here on every ASCII character and a few others, alone and between
    words), else None."""
    from tokenizers import pre_tokenizers

    from seqmodels import kernels

    lib = kernels.load_words()
    if lib is None:
        return None
    characters = [chr(c) for c in range(128)] + list("éß’–\x85\xa0\u2003\u0301😀")
    sample = ["".join(characters), " ".join(f"ab{c}{c}cd_9{c}" for c in characters), "", "  \t", "x"]
    _character_classes().learn(sample)
    split = pre_tokenizers.Whitespace()
    expected = collections.Counter(w for text in sample for w, _ in split.pre_tokenize_str(text))
    vocabulary = {word: i for i, word in enumerate(sorted(expected)[::2], start=2)}
    got_ids, ends = _WordTable(lib, vocabulary).encode([t.encode() for t in sample], 1)
    want_ids = [vocabulary.get(w, 1) for text in sample for w, _ in split.pre_tokenize_str(text)]
    if (_WordTable(lib).count([t.encode() for t in sample]) != expected or got_ids.tolist() != want_ids
            or ends[-1] != len(want_ids)):
        log.warning("seqmodels' compiled word splitter disagrees with the tokenizers library on this machine; "
                    "using the library (slower). Please report your platform and compiler.")
        return None
    return lib


class WordTokenizer:
    """Raw texts -> padded batches of word ids, the one way training, evaluation and ``classify`` read them.

    Normalise (:func:`normalize`), split into words and punctuation runs, map to ids (``[PAD]`` = 0,
    ``[UNK]`` = 1, then words by training frequency), truncate, pad:

    * ``max_length`` tokens are kept in training; ``eval_max_length`` in validation, test, predict
      and :meth:`SequenceClassifier.classify` (``None``: the whole text);
    * ``truncation_side="right"`` keeps a text's first tokens, ``"left"`` its last;
    * ``padding_side="right"`` pads each batch to its longest text and passes ``lengths``, so the
      backbone never reads padding; ``"left"`` (the Keras recipe) pads every text at the front to
      the stage's length, without lengths, and the network reads the padding.
    """

    def __init__(self, tokenizer_json: str, max_length: int | None = 400, eval_max_length: int | None = 400,
                 padding_side: Side = "right", truncation_side: Side = "right") -> None:
        for name, value in (("max_length", max_length), ("eval_max_length", eval_max_length)):
            if value is not None and value < 1:
                raise InvalidInputError(f"{name} must be a positive number of tokens or null (whole texts), got {value}.")
        if padding_side not in ("right", "left") or truncation_side not in ("right", "left"):
            raise InvalidInputError(f"padding_side and truncation_side must be 'right' or 'left', got "
                                    f"{padding_side!r} and {truncation_side!r}.")
        if padding_side == "left" and (max_length is None or eval_max_length is None):
            raise InvalidInputError("padding_side 'left' pads every text to a fixed length: set max_length and "
                                    "eval_max_length to numbers.")
        self.tokenizer_json = tokenizer_json
        self.max_length, self.eval_max_length = max_length, eval_max_length
        self.padding_side, self.truncation_side = padding_side, truncation_side
        self._bare = None
        self._table: _WordTable | bool | None = None  # words.c's copy of the vocabulary, False: not used
        self._unknown: int | None = None

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 1, **settings: Any) -> WordTokenizer:
        """A vocabulary of at most ``vocab_size`` entries from ``texts`` (the training split only):
        ``[PAD]``, ``[UNK]``, then the words seen at least ``min_frequency`` times, most frequent first,
        ties in code point order: the ``tokenizers`` library's WordLevelTrainer's choice, and its
        tokenizer file. Counted by ``words.c`` where it is built (module docstring of ``words.c``), by
        the library's trainer elsewhere."""
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        lib = _compiled_words()
        if lib is None:
            tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
            tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
            trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                                special_tokens=[PAD, UNK], show_progress=False)
            texts = iter(texts)
            # Lists of texts, not single ones: the trainer counts the words of a list in parallel.
            batches = iter(lambda: [normalize(t) for t in itertools.islice(texts, 1000)], [])
            tokenizer.train_from_iterator(batches, trainer)
            return cls(tokenizer.to_str(), **settings)
        normalized = [normalize(t) for t in texts]
        data = [_utf8(t) for t in normalized]
        _character_classes().learn(t for t, d in zip(normalized, data) if d is not None and not t.isascii())
        counts = _WordTable(lib).count([d for d in data if d is not None])
        split = pre_tokenizers.Whitespace()
        for text, d in zip(normalized, data):
            if d is None:
                for word, _ in split.pre_tokenize_str(text):
                    counts[word] = counts.get(word, 0) + 1
        frequent = (w for w, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if n >= min_frequency)
        vocabulary = {word: i for i, word in enumerate(itertools.islice(itertools.chain([PAD, UNK], frequent), vocab_size))}
        tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.add_special_tokens([PAD, UNK])
        return cls(tokenizer.to_str(), **settings)

    @property
    def _tokenizer(self):
        if self._bare is None:
            from tokenizers import Tokenizer

            self._bare = Tokenizer.from_str(self.tokenizer_json)
            self._bare.normalizer = None  # normalize() runs in Python, faster in bulk
        return self._bare

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def vocabulary(self) -> dict[str, int]:
        return self._tokenizer.get_vocab()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Whole texts -> ids, untruncated (truncation belongs to :meth:`collate`)."""
        ids, offsets = self.encode_flat(texts)
        return [ids[a:b].tolist() for a, b in itertools.pairwise(offsets.tolist())]

    def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Whole texts -> all their ids one after another (int32) and text i's bounds in them,
        ``offsets[i]`` to ``offsets[i + 1]`` (int64), by ``words.c`` where it applies, else (and for a
        text with a lone surrogate) by the ``tokenizers`` library: the same ids either way."""
        normalized = [normalize(t) for t in texts]
        fast = self._fast_words()
        data = [_utf8(t) if fast is not None else None for t in normalized]
        plain = np.array([d is not None for d in data], dtype=bool)
        lengths = np.zeros(len(normalized), dtype=np.int64)
        if plain.any():
            _character_classes().learn(t for t, d in zip(normalized, data) if d is not None and not t.isascii())
            fast_ids, ends = fast.encode([d for d in data if d is not None], self._unknown)
            lengths[plain] = np.diff(ends, prepend=0)
        others = [normalized[i] for i in np.flatnonzero(~plain)]
        # In chunks: one call on 25k reviews measured 4.5 s, the same in chunks of 1,000 2.0 s.
        other_ids = [e.ids for start in range(0, len(others), 1000)
                     for e in self._tokenizer.encode_batch_fast(others[start: start + 1000])]
        lengths[~plain] = [len(ids) for ids in other_ids]
        offsets = np.zeros(len(normalized) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.empty(offsets[-1], dtype=np.int32)
        if plain.any():  # each text's ids moved from where the table wrote them to where they belong
            starts = np.concatenate([[0], ends[:-1]])
            ids[np.arange(len(fast_ids)) + np.repeat(offsets[:-1][plain] - starts, lengths[plain])] = fast_ids
        for i, text_ids in zip(np.flatnonzero(~plain).tolist(), other_ids):
            ids[offsets[i]: offsets[i + 1]] = text_ids
        return ids, offsets

    def _fast_words(self) -> _WordTable | None:
        """This vocabulary in ``words.c``'s table, where the library's reading of a normalised text is
        the Whitespace split and a WordLevel lookup alone: no special token a lowercased text could hold
        (the library would match it first), nothing after the model."""
        if self._table is None:
            import json

            spec = json.loads(self.tokenizer_json)
            lib = _compiled_words()
            applies = (lib is not None and spec.get("pre_tokenizer") == {"type": "Whitespace"}
                       and spec.get("model", {}).get("type") == "WordLevel"
                       and spec["model"].get("unk_token") is not None
                       and not any(spec.get(k) for k in ("truncation", "padding", "post_processor"))
                       and all(t["content"] != t["content"].lower() for t in spec.get("added_tokens", [])))
            self._table = _WordTable(lib, self.vocabulary()) if applies else False
            self._unknown = self._tokenizer.token_to_id(spec["model"]["unk_token"]) if applies else None
        return self._table or None

    def length_limit(self, training: bool) -> int | None:
        return self.max_length if training else self.eval_max_length

    def truncate(self, ids: Sequence[int], training: bool) -> Sequence[int]:
        limit = self.length_limit(training)
        if limit is None or len(ids) <= limit:
            return ids
        return ids[-limit:] if self.truncation_side == "left" else ids[:limit]

    def collate(self, sequences: Sequence[Sequence[int]], training: bool) -> dict[str, Tensor]:
        """Id sequences -> ``{"input_ids" (batch, time)[, "lengths" (batch,)]}``; an empty text reads
        as one ``[PAD]``."""
        sequences = [self.truncate(ids, training) for ids in sequences]
        lengths = [max(len(s), 1) for s in sequences]
        left = self.padding_side == "left"
        width = self.length_limit(training) if left else max(lengths)
        input_ids = np.zeros((len(sequences), width), dtype=np.int64)
        for row, ids in enumerate(sequences):
            if len(ids):
                if left:
                    input_ids[row, width - len(ids):] = ids
                else:
                    input_ids[row, : len(ids)] = ids
        batch = {"input_ids": torch.from_numpy(input_ids)}
        if not left:
            batch["lengths"] = torch.tensor(lengths)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer_json, "max_length": self.max_length,
                "eval_max_length": self.eval_max_length, "padding_side": self.padding_side,
                "truncation_side": self.truncation_side}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> WordTokenizer:
        state = dict(state)
        return cls(state.pop("tokenizer"), **state)

    def __getstate__(self) -> dict[str, Any]:  # picklable for datasets.map's worker processes
        return self.state_dict()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**{"tokenizer_json" if k == "tokenizer" else k: v for k, v in state.items()})


# -- characters ---------------------------------------------------------------------------------

UNKNOWN = "\ufffd"  # id 0: characters the training part never shows


class CharVocabulary:
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

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocabulary) and other.chars == self.chars

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if len(self) <= 256 else np.uint16 if len(self) <= 65536 else np.uint32)

    def encode_codes(self, codes: np.ndarray) -> np.ndarray:
        """Unicode code points -> ids (unknown characters -> 0)."""
        return self._table[np.minimum(codes, len(self._table) - 1)]

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, 0) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def unknown(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.index or c == UNKNOWN})

    def default_prompt(self) -> str:
        """A newline where the text has lines, else its first character in sort order."""
        return "\n" if "\n" in self.index else self.chars[1] if len(self.chars) > 1 else UNKNOWN

    def state_dict(self) -> dict[str, Any]:
        return {"chars": self.chars}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CharVocabulary:
        return cls(state["chars"])


# -- series -------------------------------------------------------------------------------------

class SeriesTransform:
    """Raw values <-> what a forecaster models: an optional log, differencing at the given lags in
    order (``[1, 12]``: the trend and the yearly season of a monthly series), then standardisation
    with the mean and standard deviation of the *training* values, set by :meth:`fit`.

    Works on tensors ``(..., time)``; differencing shortens the time axis by ``sum(differences)``.
    """

    def __init__(self, log: bool = False, differences: Sequence[int] = (), mean: float = 0.0, std: float = 1.0) -> None:
        differences = [int(lag) for lag in differences]
        if any(lag < 1 for lag in differences):
            raise InvalidInputError(f"differences must be positive lags, got {differences}.")
        self.log, self.differences, self.mean, self.std = bool(log), differences, float(mean), float(std)

    @property
    def lost(self) -> int:
        """Values consumed by differencing: a window of ``w`` raw values gives ``w - lost`` features."""
        return sum(self.differences)

    def check(self, values: Tensor, where: str = "the series") -> None:
        if self.log:
            bad = (values <= 0).nonzero().flatten().tolist()
            if bad:
                raise InvalidInputError(
                    f"log=True needs positive values, but {where} has {len(bad)} values <= 0 "
                    f"(at positions {bad[:5]}). Set data.log false or shift the series."
                )

    def fit(self, train_values: Tensor) -> SeriesTransform:
        self.check(train_values, "the training part")
        z = self.levels(train_values)[-1]
        self.mean, self.std = float(z.mean()), max(float(z.std()), 1e-8)
        return self

    def levels(self, raw: Tensor) -> list[Tensor]:
        """The series after the log and after each differencing: ``[z, diff_1 z, ...]``."""
        z = raw.log() if self.log else raw
        levels = [z]
        for lag in self.differences:
            z = z[..., lag:] - z[..., :-lag]
            levels.append(z)
        return levels

    def transform(self, raw: Tensor) -> Tensor:
        """Raw ``(..., time)`` -> standardised ``(..., time - lost)``."""
        return (self.levels(raw)[-1] - self.mean) / self.std

    def inverse_next(self, scaled: Tensor, window: Tensor) -> Tensor:
        """Raw value(s) from a prediction ``(batch, k)`` of the scaled values that follow the raw
        ``window`` ``(batch, time)``. With differencing, only ``k = 1`` is defined."""
        value = scaled * self.std + self.mean
        # Undo each differencing: the next value is the difference plus the value `lag` back.
        for lag, level in zip(reversed(self.differences), reversed(self.levels(window)[:-1])):
            value = value + level[:, -lag:][:, :1]
        return value.exp() if self.log else value

    def state_dict(self) -> dict[str, Any]:
        return {"log": self.log, "differences": list(self.differences), "mean": self.mean, "std": self.std}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> SeriesTransform:
        return cls(**state)

    def __repr__(self) -> str:
        return (f"SeriesTransform(log={self.log}, differences={self.differences}, mean={self.mean:.4g}, "
                f"std={self.std:.4g})")


class PanelTransform:
    """What a global forecaster reads besides the values, fitted on the training part of many series.

    * Values are scaled per window (as DeepAR does per series): divided by the mean absolute
      observed value of the window's context, so one model serves series of any level, including
      series it never saw. Nothing about a particular series is stored.
    * Covariates, named in order: ``past`` (observed up to the forecast origin, e.g. a measured
      driver) and ``future`` (known ahead, e.g. a holiday or a law in force), standardised with
      the training part's mean and standard deviation.
    * ``calendar``: four known-future features from the dates, month of year and day of week as
      points on the unit circle (so December sits next to January).
    * ``log``: the model reads and forecasts ``log(value / scale)`` (positive series only), so its
      errors are relative ones, as sMAPE and MAPE count them.
    * ``season``: the model reads and forecasts seasonally adjusted values, as the Theta method and
      ES-RNN do. Each series' multiplicative seasonal factors (:meth:`seasonal_factors`) come from its
      own history; the data module computes them and hands them over with every window (``season``
      in the batch), so nothing per series is stored here either.
    """

    calendar_features = 4

    def __init__(self, past: Sequence[str] = (), future: Sequence[str] = (), calendar: bool = False,
                 log: bool = False, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 season: bool = False) -> None:
        self.past, self.future, self.calendar, self.log = list(past), list(future), bool(calendar), bool(log)
        self.season = bool(season)
        names = self.past + self.future
        if len(set(names)) != len(names):
            raise InvalidInputError(f"A covariate is named twice in past {self.past} and future {self.future}.")
        self.mean = [float(v) for v in mean] if mean is not None else [0.0] * len(names)
        self.std = [float(v) for v in std] if std is not None else [1.0] * len(names)

    @property
    def past_features(self) -> int:
        return len(self.past)

    @property
    def future_features(self) -> int:
        return len(self.future) + self.calendar_features * self.calendar

    def fit(self, covariates: np.ndarray) -> PanelTransform:
        """``covariates (time, past + future)``: every series' training rows, stacked."""
        if covariates.shape[1]:
            self.mean = covariates.mean(0).astype(float).tolist()
            std = covariates.std(0)
            # A covariate constant in training (a law not yet in force) is only centred: dividing by a
            # tiny spread would turn its later change into a value of millions.
            self.std = np.where(std > 1e-6 * np.maximum(1.0, np.abs(covariates.mean(0))), std, 1.0).astype(float).tolist()
        return self

    def standardise(self, covariates: np.ndarray) -> np.ndarray:
        if not covariates.shape[1]:
            return covariates.astype(np.float32)
        return ((covariates - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    @staticmethod
    def calendar_of(dates: Sequence[str]) -> np.ndarray:
        """``(time, 4)``: sin/cos of the month of year and of the day of week."""
        import pandas as pd

        parsed = pd.DatetimeIndex(pd.to_datetime(pd.Series(list(dates)), errors="raise"))
        month = 2 * np.pi * (parsed.month.to_numpy() - 1) / 12
        weekday = 2 * np.pi * parsed.dayofweek.to_numpy() / 7
        return np.stack([np.sin(month), np.cos(month), np.sin(weekday), np.cos(weekday)], 1).astype(np.float32)

    @staticmethod
    def scale(context: Tensor, observed: Tensor) -> Tensor:
        """Each window's scale ``(batch, 1)``: the mean absolute observed value (1 where it is 0)."""
        total = (context.abs() * observed).sum(1, keepdim=True)
        mean = total / observed.sum(1, keepdim=True).clamp_min(1)
        return torch.where(mean > 0, mean, torch.ones_like(mean))

    def normalise(self, values: Tensor, scale: Tensor, observed: Tensor | None = None) -> Tensor:
        """Values in the model's units: divided by the window's scale (and logged); 0 where unobserved."""
        z = values / scale
        if self.log:
            z = z.clamp_min(1e-12).log()
        return z if observed is None else torch.where(observed > 0, z, torch.zeros_like(z))

    def denormalise(self, z: Tensor, scale: Tensor) -> Tensor:
        """The inverse of :meth:`normalise`; ``scale`` broadcasts from the left: ``(B, 1[, 1])``."""
        return (z.exp() if self.log else z) * scale

    @staticmethod
    def seasonal_factors(history: np.ndarray, period: int) -> np.ndarray:
        """Multiplicative seasonal factors ``(period,)`` of a series from its ``history``, indexed by
        position modulo ``period`` from the series' first value; all ones where there is no seasonality
        to remove.

        As the Theta method decides (and statsmodels' ``ThetaModel`` does): the series is seasonal when
        its autocorrelation at lag ``period`` is significant at the 90% level (Bartlett's standard
        error); its factors are then a classical multiplicative decomposition's: the ratio of each value
        to the centred moving average, averaged per position, normalised to a mean of 1. Histories
        shorter than two periods, or with a value <= 0, are left as they are."""
        ones = np.ones(max(period, 1), np.float32)
        n = len(history)
        if period < 2 or n < 2 * period or not (history > 0).all():
            return ones
        y = np.asarray(history, np.float64)
        centred = y - y.mean()
        denominator = centred @ centred
        if denominator == 0:
            return ones
        acf = np.array([centred[k:] @ centred[: n - k] for k in range(period + 1)]) / denominator
        if abs(acf[period]) <= 1.6449 * np.sqrt((1 + 2 * (acf[1:period] ** 2).sum()) / n):
            return ones
        weights = np.r_[0.5, np.ones(period - 1), 0.5] / period if period % 2 == 0 else np.ones(period) / period
        trend = np.convolve(y, weights, mode="valid")
        first = len(weights) // 2  # the position of the first centred average
        ratios = y[first : first + len(trend)] / trend
        positions = (np.arange(len(trend)) + first) % period
        factors = np.array([ratios[positions == p].mean() for p in range(period)])
        return (factors / factors.mean()).astype(np.float32)

    @staticmethod
    def seasonally_adjusted(batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor | None]:
        """The batch with its context and target divided by their seasonal factors (``season (B, window +
        horizon)``, present when the data module deseasonalises), and the horizon's factors, by which
        forecasts are multiplied back (None: nothing to undo)."""
        season = batch.get("season")
        if season is None:
            return batch, None
        window = batch["context"].shape[1]
        adjusted = dict(batch)
        adjusted["context"] = batch["context"] / season[:, :window]
        adjusted["target"] = batch["target"] / season[:, window:]
        return adjusted, season[:, window:]

    def state_dict(self) -> dict[str, Any]:
        return {"past": self.past, "future": self.future, "calendar": self.calendar, "log": self.log,
                "mean": self.mean, "std": self.std, "season": self.season}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PanelTransform:
        return cls(**state)

    def __repr__(self) -> str:
        return (f"PanelTransform(past={self.past}, future={self.future}, calendar={self.calendar}, log={self.log}, "
                f"season={self.season})")


KINDS: dict[str, type] = {cls.__name__: cls for cls in (WordTokenizer, CharVocabulary, SeriesTransform,
                                                         PanelTransform)}


def to_checkpoint(preprocessor: Preprocessor) -> dict[str, Any]:
    """Plain data naming the object's kind, for ``checkpoint["preprocessor"]``."""
    return {"kind": type(preprocessor).__name__, "state": preprocessor.state_dict()}


def from_checkpoint(entry: dict[str, Any]) -> Preprocessor:
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind not in KINDS:
        raise InvalidInputError(f"Unknown preprocessing kind {kind!r} in the checkpoint; expected one of {sorted(KINDS)}.")
    return KINDS[kind].from_state_dict(entry["state"])


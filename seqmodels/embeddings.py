"""Pretrained word vectors from a local file, mapped onto a tokenizer's vocabulary.

Reads the text formats of word2vec (a first line ``<count> <dim>``, then ``word v1 ... vd``) and
GloVe (no header), optionally gzipped (``.gz``). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from seqmodels.errors import InvalidInputError, MissingInputError


@dataclass
class WordVectors:
    """Rows for a vocabulary: ``weight (vocab, dim)``; ``found`` marks the tokens the file had."""

    weight: Tensor
    found: Tensor

    @property
    def coverage(self) -> float:
        return float(self.found[1:].float().mean())  # row 0 is padding


def load_word_vectors(path: str | Path, vocabulary: dict[str, int], dim: int, seed: int = 0) -> WordVectors:
    """The vectors of ``path`` for each token of ``vocabulary`` (token -> row).

    A token is looked up as written, then lower-cased (the tokenizer lower-cases; the file may
    not). Tokens the file lacks start from a normal draw with each dimension's mean and standard
    deviation over the found vectors, so they sit among the pretrained ones rather than at a
    different scale; the padding row (0) is zero.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"Word-vector file {path} does not exist. Check model.embeddings (a word2vec or "
                                "GloVe text file, optionally .gz).")
    size = max(vocabulary.values()) + 1
    weight = torch.zeros(size, dim)
    found = torch.zeros(size, dtype=torch.bool)
    exact: set[int] = set()
    lowered = {}
    for token, index in vocabulary.items():
        lowered.setdefault(token.lower(), []).append(index)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            parts = line.rstrip("\n").rstrip().split(" ")
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                if int(parts[1]) != dim:
                    raise InvalidInputError(f"{path} holds {parts[1]}-dimensional vectors but model.embedding_dim is "
                                            f"{dim}; set model.embedding_dim {parts[1]}.")
                continue  # word2vec's header
            if len(parts) != dim + 1:
                if number == 1:
                    raise InvalidInputError(f"{path} holds {len(parts) - 1}-dimensional vectors but model.embedding_dim "
                                            f"is {dim}; set model.embedding_dim {len(parts) - 1}.")
                raise InvalidInputError(f"{path}, line {number}: expected a word and {dim} numbers, got "
                                        f"{len(parts)} fields. Is the file a word2vec/GloVe text file?")
            word = parts[0]
            rows = [vocabulary[word]] if word in vocabulary else lowered.get(word.lower(), [])
            rows = [r for r in rows if r not in exact]  # an exact match is never overwritten by a cased one
            if not rows:
                continue
            try:
                vector = torch.tensor([float(v) for v in parts[1:]])
            except ValueError:
                raise InvalidInputError(f"{path}, line {number}: the vector of {word!r} has a value that is not a "
                                        "number.") from None
            for row in rows:
                weight[row], found[row] = vector, True
            if word in vocabulary:
                exact.add(vocabulary[word])
    found[0] = False
    if found.any():
        mean, std = weight[found].mean(0), weight[found].std(0).nan_to_num(0.1).clamp_min(1e-3)
    else:
        mean, std = torch.zeros(dim), torch.full((dim,), 0.1)
    generator = torch.Generator().manual_seed(seed)
    missing = ~found
    weight[missing] = mean + std * torch.randn(int(missing.sum()), dim, generator=generator)
    weight[0] = 0
    return WordVectors(weight, found)

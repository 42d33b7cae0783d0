"""Where data lives: ``data_dir`` argument, else ``$SEQMODELS_DATA_DIR``, else ``data/``; and where
what is computed from it (encodings, tokenizers) is cached: ``cache_dir`` argument, else
``$SEQMODELS_CACHE_DIR``, else ``~/.cache/seqmodels`` (never the data directory, which may be shared
and read-only)."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from seqmodels.errors import MissingInputError
from seqmodels.files import atomic_path


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    return Path(explicit or os.environ.get("SEQMODELS_DATA_DIR") or "data")


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    return Path(explicit or os.environ.get("SEQMODELS_CACHE_DIR") or Path.home() / ".cache" / "seqmodels")


def fetch(path: Path, url: str, what: str) -> Path:
    """``path`` if it exists; otherwise download ``url`` there, or explain how to provide it."""
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=20) as response, atomic_path(path) as partial:
            partial.write_bytes(response.read())
        return path
    except OSError as error:
        raise MissingInputError(
            f"{what} was not found at {path} and could not be downloaded from {url} ({error}). "
            f"Put a copy at {path}, or point SEQMODELS_DATA_DIR (or the data module's data_dir) at a "
            "directory that holds it."
        ) from None

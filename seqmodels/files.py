"""Writing files so that a reader never sees half of one: the one helper every writer uses."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def private_partial(path: Path) -> Path:
    """A name next to ``path`` that no other process writes: write there, then ``replace`` it onto
    ``path``. Per host and process, because ranks on nodes sharing a file system may build the same
    file at once, and a shared partial file would interleave their writes."""
    return path.with_name(f".{path.stem}.{socket.gethostname()}-{os.getpid()}.part{path.suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a private temporary path beside ``path``; when the block ends without an error it is
    flushed to disk and renamed onto ``path``, otherwise removed. A process killed mid-write leaves
    the previous file (or none) under the real name, never a truncated one."""
    path = Path(path)
    partial = private_partial(path)
    try:
        yield partial
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "w") -> Path:
    """``write(f)`` to a temporary file, then rename it onto ``path`` (see :func:`atomic_path`)."""
    path = Path(path)
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as partial:
        with open(partial, mode, encoding=encoding, newline="" if encoding else None) as f:
            write(f)
    return path

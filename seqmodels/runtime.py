"""Process-wide settings that make training fast on a plain Linux machine without the user
setting environment variables."""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_DONE = False


def tune_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the OS after every step.

    glibc serves blocks above its mmap threshold (128 KiB, rising adaptively to 32 MiB at most)
    with fresh ``mmap`` calls and trims the heap top above 128 KiB, so the activations of every
    training step are unmapped when freed and faulted back in, zeroed, at the next step: millions of
    minor page faults and seconds of system time per hundred steps. Raising both thresholds once, at
    start-up, keeps those pages. Skipped when the user set any ``MALLOC_*`` variable (their choice
    wins), when ``SEQMODELS_TUNE_MALLOC=0``, and off glibc. Returns whether the setting was applied.
    """
    global _DONE
    if _DONE or not sys.platform.startswith("linux") or os.environ.get("SEQMODELS_TUNE_MALLOC") == "0" \
            or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl has no mallopt semantics to rely on
    except (OSError, AttributeError):
        return False
    # As MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ of a few GiB would (mallopt takes an int):
    # measured on the char LM, 3.5 million minor faults -> 0.24 million, 27.5 s -> 21.8 s (docs/results.md).
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    largest = 2**31 - 1
    applied = libc.mallopt(_M_MMAP_THRESHOLD, largest) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, largest) == 1
    _DONE = applied
    return applied


# Measured (benchmarks/bf16_memory.py): bf16 training products of the scratch cells have a new row count
# at nearly every ragged batch, and ideep's and oneDNN's caches keep a primitive for each shape (1,024 of
# each by default); a bf16 IMDB fine-tune reached 8.5 GB of RSS on an AMX CPU, 1.75 GB in float32.
# 16 of each kept the same step time.
_CACHE_VARIABLES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")


def limit_onednn_caches(capacity: int = 16) -> None:
    """Bound the kernel caches of oneDNN (and of ideep, torch's layer over it) to ``capacity`` shapes
    each, unless the user set them. Both are read when the process first runs a oneDNN operation, so
    this runs when :mod:`seqmodels` is imported, before any."""
    for name in _CACHE_VARIABLES:
        os.environ.setdefault(name, str(capacity))

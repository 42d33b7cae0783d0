import os
from pathlib import Path

import pytest

# pytest-xdist's workers share the machine: torch would give each of them every core, and 14
# workers of 16 threads on a 16-core machine (an H100 host) left CPU-bound tests stuck for minutes.
# Each worker, and the processes its tests start, gets its share (set before torch is imported).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty directory, so lightning_logs/ lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def real_data_dir() -> Path | None:
    path = os.environ.get("SEQMODELS_DATA_DIR")
    return Path(path) if path and Path(path).is_dir() else None

import os
from pathlib import Path

import pytest

# The suite's runs go through Lightning's accelerator="auto", and its assertions (scratch cells equal to
# native ones, a resumed run equal to a straight one, predict equal to test) were written for CPU kernels,
# which CI has. On a machine with a GPU (an H100, 2026-11-24) some of them failed once the GPU was used
# (which ones was not captured; not yet diagnosed), so the GPU is hidden from the tests and from the
# processes they start, before anything initialises CUDA. SEQMODELS_TESTS_ON_GPU=1 leaves it visible.
if os.environ.get("SEQMODELS_TESTS_ON_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

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

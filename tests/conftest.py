import os
from pathlib import Path

import pytest

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

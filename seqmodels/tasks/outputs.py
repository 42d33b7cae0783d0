"""Where a task's ``predict`` writes its file."""

from __future__ import annotations

from pathlib import Path

import lightning as L


def output_file(module: L.LightningModule, default_name: str) -> Path:
    """``module.output_path`` (the CLI's ``--output``) if set, else ``default_name`` in the run's
    log folder (or the working directory)."""
    if getattr(module, "output_path", None):
        return Path(module.output_path)
    logger = module.logger
    folder = Path(logger.log_dir) if logger is not None and getattr(logger, "log_dir", None) else Path(".")
    return folder / default_name

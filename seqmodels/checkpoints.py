"""Checkpoints: written atomically, loaded only as plain data, found by name ("last", "best")."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from seqmodels.errors import InvalidInputError
from seqmodels.files import atomic_write


class CheckpointError(InvalidInputError):
    """A checkpoint file that cannot or must not be loaded."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with one clear error per way a file can be bad.

    Only tensors and plain data load; a checkpoint that carries pickled Python objects is
    refused (unpickling it could run arbitrary code), as is a truncated or corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index is at the end
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt: it is not a PyTorch checkpoint archive (or is one "
            "written by torch < 1.6). Use another checkpoint, e.g. an earlier best-*.ckpt of the same run."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # Most of torch's message is advice to turn the safety off; keep the line that names the object.
        lines = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "global" in line]
        reason = lines[0] if lines else "not plain data"
        raise CheckpointError(
            f"Refusing to load checkpoint {path}: it holds pickled Python objects, not just tensors and plain data "
            f"({reason}). seqmodels loads checkpoints with weights_only=True only; re-save it from trusted code "
            "with plain state (tensors, numbers, strings, lists, dicts)."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt and cannot be read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}). Use another checkpoint, e.g. an earlier "
            "best-*.ckpt of the same run."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict in it).")
    return checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same folder and renames it over the target, so a process
    killed mid-write leaves the previous checkpoint intact; reads only with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(checkpoint, f), mode="wb")

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


def find_checkpoint(which: str, runs: Path) -> tuple[Path, int]:
    """``last.ckpt`` or the best checkpoint of the newest ``version_N`` under ``runs`` (one run name's
    folder) that has one, and that version's number.

    The best is the one the run's ``ModelCheckpoint`` recorded as best in its ``last.ckpt`` (so a
    changed monitor or several kept checkpoints cannot mislead), else the only ``best-*.ckpt``.
    """
    versions = []
    for folder in runs.glob("version_*/checkpoints"):
        match = re.fullmatch(r"version_(\d+)", folder.parent.name)
        if match and any(folder.glob("*.ckpt")):
            versions.append((int(match.group(1)), folder))
    if not versions:
        raise CheckpointError(
            f"--ckpt_path {which}: no checkpoint found under {runs}/version_*/checkpoints/. Train this run first "
            "(fit with the same run_name and trainer.default_root_dir), or pass the path of a .ckpt file."
        )
    version, folder = max(versions)
    if which == "last":
        if (folder / "last.ckpt").is_file():
            return folder / "last.ckpt", version
        raise CheckpointError(f"--ckpt_path last: {folder} has no last.ckpt. Pass the path of one of its checkpoints.")
    recorded = _recorded_best(folder / "last.ckpt")
    if recorded is not None:
        return recorded, version
    candidates = sorted(folder.glob("best-*.ckpt"))
    if len(candidates) == 1:
        return candidates[0], version
    raise CheckpointError(
        f"--ckpt_path best: {folder} holds {len(candidates)} best-*.ckpt files and no last.ckpt that says which is "
        "best. Pass the path of one of them."
    )


def _recorded_best(last: Path) -> Path | None:
    if not last.is_file():
        return None
    callbacks = load_checkpoint(last).get("callbacks", {})
    for key, state in callbacks.items():
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if key.startswith("ModelCheckpoint") and best and Path(best).name != "last.ckpt":
            path = last.parent / Path(best).name  # the run folder may have moved since
            if path.is_file():
                return path
    return None

"""What makes a long run trustworthy: checkpoints that are written atomically and loaded safely,
exact resumption of random state, and a loud stop on a non-finite loss."""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import grad_norm

from seqmodels.errors import InvalidInputError


class CheckpointError(InvalidInputError):
    """A checkpoint file that cannot or must not be loaded."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with one clear error per way a file can be bad.

    Only tensors and plain data load; a checkpoint that carries pickled Python objects is
    refused (unpickling it could run arbitrary code), as is a truncated or corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Pass the path of a .ckpt file, or 'last' to resume "
                              "the newest run of this run_name.")
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
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


class RandomState(Callback):
    """Saves the Python, NumPy and torch random generators in every checkpoint and restores them
    on resume, so dropout and shuffling continue exactly as in an uninterrupted run.

    Lightning runs the sanity-check validation inside ``isolate_rng``, so restoring at load time
    leaves the generators exactly where the uninterrupted run had them when the next epoch's
    data loader draws its seed. Stored as plain lists and tensors, so the checkpoint still loads
    with ``weights_only=True``."""

    def state_dict(self) -> dict[str, Any]:
        version, state, gauss = random.getstate()
        numpy_state = np.random.get_state()
        return {
            "python": [version, list(state), gauss],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *[float(x) if isinstance(x, float) else int(x)
                                                                 for x in numpy_state[2:]]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, state, gauss = state_dict["python"]
        random.setstate((version, tuple(state), gauss))
        name, keys, *rest = state_dict["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class NonFiniteLossError(RuntimeError):
    pass


class TrainingGuard(Callback):
    """Stops training at the first NaN or infinite loss, before it reaches the weights, naming the
    step and batch; and logs the total gradient norm (before clipping) every ``log_every_n_steps``."""

    def __init__(self, log_grad_norm: bool = True) -> None:
        self.log_grad_norm = log_grad_norm
        self._batch_idx = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"The training loss is {loss.item()} at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
                f"batch {self._batch_idx}); training stopped before the optimizer step, so the weights are not "
                "corrupted and the last checkpoint is intact. Lower the learning rate, keep gradient clipping on, "
                "check that batch's data, or train in float32 instead of 16-bit precision."
            )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self.log_grad_norm and trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            norms = grad_norm(pl_module, norm_type=2)
            if "grad_2.0_norm_total" in norms:
                pl_module.log("train/grad_norm", norms["grad_2.0_norm_total"])

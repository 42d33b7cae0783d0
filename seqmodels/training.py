"""What makes a long run trustworthy: exact resumption of random state, and a loud stop on a
non-finite loss (safe checkpoints are :mod:`seqmodels.checkpoints`)."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import grad_norm


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

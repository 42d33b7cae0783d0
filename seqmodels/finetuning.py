"""Fine-tuning a pretrained network as ULMFiT does (Howard & Ruder, 2018): discriminative learning
rates per layer group, gradual unfreezing, and the slanted triangular schedule."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CyclicLR, LambdaLR, LRScheduler, OneCycleLR

# Keys of a param group that hold a learning rate (torch's schedulers add the last three).
_RATE_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


class SlantedTriangularLR(LambdaLR):
    """Linear warm-up over the first ``cut_frac`` of ``total_steps``, then linear decay; the rate
    moves between ``lr / ratio`` and ``lr`` (each group's own ``lr``, so discriminative rates keep
    their ratios). Stepped after every optimizer step. ``total_steps=None``: the trainer's
    estimate of the run's steps, filled in when training starts (``trainer.estimated_stepping_batches``).
    Past ``total_steps`` the rate stays at ``lr / ratio``.
    """

    interval = "step"

    def __init__(self, optimizer: Optimizer, total_steps: int | None = None, cut_frac: float = 0.1,
                 ratio: float = 32.0, last_epoch: int = -1) -> None:
        if not 0 < cut_frac < 1 or ratio < 1 or (total_steps is not None and total_steps < 1):
            raise ValueError(f"SlantedTriangularLR needs 0 < cut_frac < 1, ratio >= 1 and total_steps >= 1, got "
                             f"{cut_frac}, {ratio} and {total_steps}.")
        self.total_steps, self.cut_frac, self.ratio = total_steps, cut_frac, ratio
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, step: int) -> float:
        if self.total_steps is None:
            return 1 / self.ratio
        cut = max(int(self.total_steps * self.cut_frac), 1)
        if step < cut:
            p = step / cut
        else:
            p = max(1 - (step - cut) / max(self.total_steps - cut, 1), 0.0)
        return (1 + p * (self.ratio - 1)) / self.ratio

    def state_dict(self) -> dict:
        # LambdaLR would try to save the bound method; the numbers rebuild it.
        return {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "lr_lambdas")}

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)


def scheduler_interval(scheduler: LRScheduler) -> str:
    """How often Lightning steps ``scheduler``: its own ``interval``, else per batch for the schedules
    torch defines over optimizer steps, else per epoch."""
    if isinstance(scheduler, (OneCycleLR, CyclicLR)):
        return "step"
    return getattr(scheduler, "interval", "epoch")


def layer_groups(embedding: nn.Module, backbone: nn.Module, head: Iterable[nn.Module]) -> list[list[nn.Parameter]]:
    """Parameters from the bottom up: the embedding, each backbone layer (both directions), the rest."""
    layers: dict[int, list[nn.Parameter]] = {}
    for name, parameter in backbone.named_parameters():
        match = re.search(r"_l(\d+)(_reverse)?$", name)
        layers.setdefault(int(match.group(1)) if match else 0, []).append(parameter)
    top = [p for module in head for p in module.parameters()]
    return [list(embedding.parameters())] + [layers[k] for k in sorted(layers)] + [top]


def split_param_groups(optimizer: Optimizer, scheduler: LRScheduler | None, groups: Sequence[list[nn.Parameter]],
                       scales: Sequence[float]) -> None:
    """Turn an optimizer's single group (as LightningCLI builds it from the config) into one group per
    layer, with learning rates ``scale * lr``, and tell its scheduler: ULMFiT's discriminative rates
    with any optimizer and scheduler a config names. Called before the first step."""
    if len(optimizer.param_groups) != 1:
        raise ValueError("Discriminative learning rates expect the optimizer to start with one parameter group.")
    (base,) = optimizer.param_groups
    grouped = {id(p) for group in groups for p in group}
    if grouped != {id(p) for p in base["params"]}:
        raise ValueError("The layer groups must hold exactly the optimizer's parameters.")
    optimizer.param_groups = []
    for params, scale in zip(groups, scales):
        group = {key: value for key, value in base.items() if key != "params"}
        group.update({key: base[key] * scale for key in _RATE_KEYS if key in base})
        optimizer.add_param_group({**group, "params": params})
    if scheduler is not None:
        if hasattr(scheduler, "lr_lambdas"):  # LambdaLR and kin keep one factor per group
            scheduler.lr_lambdas = scheduler.lr_lambdas[:1] * len(optimizer.param_groups)
        scheduler.base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

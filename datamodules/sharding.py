"""Samplers that split their work across the processes of a distributed run themselves.

Lightning wraps any other custom sampler in a ``DistributedSamplerWrapper``, which would
interleave our length buckets and never pass the epoch on, so every epoch would repeat the
first one's order. A ``DistributedSampler`` subclass is left alone; these subclass it (without
its constructor, which needs a process group even in a single process)."""

from __future__ import annotations

from torch import distributed as dist
from torch.utils.data import DistributedSampler


def world() -> tuple[int, int]:
    """``(processes, this process's rank)``; ``(1, 0)`` outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def share(items: list, replicas: int, rank: int) -> list:
    """This rank's items, round robin, padded by wrapping around so every rank gets as many."""
    if replicas == 1:
        return items
    per_rank = -(-len(items) // replicas)
    padded = items + items[: per_rank * replicas - len(items)]
    return padded[rank::replicas]


class ShardedSampler(DistributedSampler):
    def __init__(self, shuffle: bool, seed: int) -> None:  # noqa: D107 - see the module docstring
        self.shuffle, self.seed, self.epoch, self.drop_last = shuffle, seed, 0, False

    @property
    def num_replicas(self) -> int:
        return world()[0]

    @property
    def rank(self) -> int:
        return world()[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

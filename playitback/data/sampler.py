"""Distributed samplers: a resumable training sampler and an evaluation sampler that visits every item exactly once."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler[int]):
    """Shuffled indices of one process, resumable inside an epoch.

    Every process draws the same permutation (seeded by seed + epoch) and takes every `world`-th index, so at each step
    the union of the processes' batches is one contiguous slice of the permutation: the same global batch for any
    number of processes. The tail that does not fill a global batch is dropped (like drop_last). After
    `set_start_batch(k)` the first k batches of the epoch are skipped, which is how a run resumes mid-epoch.
    """

    def __init__(self, num_items: int, batch_size: int, world: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.num_items = num_items
        self.batch_size = batch_size  # per process
        self.world = world
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0
        self.batches_per_epoch = num_items // (batch_size * world)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{num_items} training items cannot fill one global batch of {batch_size * world}; "
                "lower TRAIN.BATCH_SIZE or add data"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start_batch = 0

    def set_start_batch(self, batch: int) -> None:
        self.start_batch = batch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_items, generator=generator)
        used = order[: self.batches_per_epoch * self.batch_size * self.world]
        mine = used[self.rank :: self.world]
        return iter(mine[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class EvalSampler(Sampler[int]):
    """Indices rank, rank + world, ... in order: every item exactly once over all processes (no padding, so no item
    is counted twice in a metric; processes may get one item more or less)."""

    def __init__(self, num_items: int, world: int = 1, rank: int = 0) -> None:
        self.indices = range(rank, num_items, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

"""Distributed samplers: resumable training samplers (uniform and class-balanced) and an evaluation sampler that visits
every item exactly once.

Both training samplers follow one rule: every process builds the same sequence of items for the epoch (from one
generator seeded by the pair of the run's seed and the epoch) and takes every `world`-th entry, so at each step the
union of the processes' batches is one contiguous slice of that sequence: the same global batch for any number of processes. The
tail that does not fill a global batch is dropped (like drop_last), and after `set_start_batch(k)` the first k batches
of the epoch are skipped, which is how a run resumes mid-epoch.
"""
from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for (run seed, epoch) that differs for every pair: ``seed + epoch`` made seed 0 epoch 1 and seed 1 epoch
    0 draw the same sequence, so two "different seeds" trained on shifted copies of one sequence of orders."""
    return int(np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's sequence (the same for every process), seeded by :func:`epoch_seed`."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


class _EpochSampler(Sampler):
    """The shared logic: per-epoch sequence -> this process's strided share, resumable at a batch boundary."""

    def __init__(self, length: int, batch_size: int, world: int, rank: int, seed: int, what: str) -> None:
        self.length = length  # entries of the epoch's sequence
        self.batch_size = batch_size  # per process
        self.world = world
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0
        self.batches_per_epoch = length // (batch_size * world)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{length} {what} cannot fill one global batch of {batch_size * world}; lower TRAIN.BATCH_SIZE or "
                "add data"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start_batch = 0

    def set_start_batch(self, batch: int) -> None:
        self.start_batch = batch

    def _sequence(self, generator: torch.Generator) -> torch.Tensor:
        """The epoch's item indices [length]."""
        raise NotImplementedError

    def _positions(self) -> slice:
        """This process's positions in the epoch's sequence, from the start batch on."""
        used = self.batches_per_epoch * self.batch_size * self.world
        return slice(self.rank + self.start_batch * self.batch_size * self.world, used, self.world)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class TrainSampler(_EpochSampler):
    """Shuffled indices of one process: a permutation of the items per epoch (every item at most once)."""

    def __init__(self, num_items: int, batch_size: int, world: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(num_items, batch_size, world, rank, seed, "training items")
        self.num_items = num_items

    def _sequence(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.num_items, generator=generator)

    def __iter__(self) -> Iterator[int]:
        order = self._sequence(epoch_generator(self.seed, self.epoch))
        return iter(order[self._positions()].tolist())


def class_balanced_weights(labels: Sequence[Sequence[int]], num_classes: int, offset: float) -> np.ndarray:
    """Per-clip sampling weights of multi-label data: ``w_i = sum over c in labels_i of 1 / (n_c + offset)``.

    ``n_c`` is the number of clips carrying label c. This is the rule of AST (Gong et al., 2021, ``gen_weight_file.py``:
    offset 0.01) and PaSST (Koutini et al., 2022, ``get_ft_cls_balanced_sample_weights``: offset 100), up to their
    constant factor 1000, which does not change the draw. A clip of a rare class is drawn more often, and a clip with
    several labels adds up the weights of all of them; the offset damps the weights of the rarest classes.

    Args:
        labels: Label ids of every clip (one id for single-label data).
        num_classes: Size of the label space.
        offset: Added to every count (>= 0).

    Returns:
        float64 weights ``[len(labels)]``.
    """
    flat = np.fromiter((label for clip in labels for label in clip), dtype=np.int64)
    owner = np.repeat(np.arange(len(labels)), [len(clip) for clip in labels])
    counts = np.bincount(flat, minlength=num_classes).astype(np.float64)
    return np.bincount(owner, weights=1.0 / (counts[flat] + offset), minlength=len(labels))


def read_sample_weights(path: str | Path, uids: Sequence[str]) -> np.ndarray:
    """Per-clip weights from a CSV, in the order of `uids`.

    Two forms: a header ``uid,weight`` (any order; every uid must be listed), or one number per line with no header
    in the order of the training list (AST's ``*_weight.csv``; the line count must equal the number of clips).

    Raises:
        ValueError: Missing file, a malformed line, a clip without weight, a line count that differs, or a negative,
            non-finite or all-zero weight.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: sample weights file not found; check DATA.SAMPLE_WEIGHTS_FILE")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row and row[0].strip()]
    try:
        if rows and [cell.strip() for cell in rows[0][:2]] == ["uid", "weight"]:
            by_uid = {row[0].strip(): float(row[1]) for row in rows[1:]}
            missing = [uid for uid in uids if uid not in by_uid]
            if missing:
                raise ValueError(f"{path}: no weight for {len(missing)} training clip(s), e.g. {missing[0]!r}; list "
                                 "every clip of the training list")
            weights = np.array([by_uid[uid] for uid in uids], dtype=np.float64)
        else:
            if len(rows) != len(uids):
                raise ValueError(f"{path}: {len(rows)} weights for {len(uids)} training clips; give one weight per "
                                 "clip of the training list, or the uid,weight form")
            weights = np.array([float(row[0]) for row in rows], dtype=np.float64)
    except (IndexError, ValueError) as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: malformed weights file ({err}); write uid,weight rows or one number per line") \
            from None
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"{path}: weights must be finite, non-negative and not all zero")
    return weights


class BalancedSampler(_EpochSampler):
    """Weighted draws with replacement: `num_draws` items per epoch, item i with probability w_i / sum(w).

    Yields ``(index, draw)`` pairs, `draw` being the position in the epoch's sequence, so that a clip drawn twice in an
    epoch gets two different random crops (the dataset seeds its crop with the draw).
    """

    def __init__(self, weights: np.ndarray | torch.Tensor, num_draws: int, batch_size: int, world: int = 1,
                 rank: int = 0, seed: int = 0) -> None:
        super().__init__(num_draws, batch_size, world, rank, seed, "draws per epoch")
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.ndim != 1 or not bool(torch.isfinite(self.weights).all()) or bool((self.weights < 0).any()) \
                or float(self.weights.sum()) <= 0:
            raise ValueError("sampling weights must be a 1-D array of finite, non-negative values, not all zero")

    def _sequence(self, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, self.length, replacement=True, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draws = self._sequence(epoch_generator(self.seed, self.epoch))
        positions = self._positions()
        return iter(zip(draws[positions].tolist(), range(positions.start, positions.stop, positions.step)))


class EvalSampler(Sampler[int]):
    """Indices rank, rank + world, ... in order: every item exactly once over all processes (no padding, so no item
    is counted twice in a metric; processes may get one item more or less)."""

    def __init__(self, num_items: int, world: int = 1, rank: int = 0) -> None:
        self.indices = range(rank, num_items, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

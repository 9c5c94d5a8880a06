"""The epoch policy of a training run, apart from any model or dataset: which epochs are checkpointed and validated,
the checks after every epoch (unreadable files, a run that is not learning), how a resumed run finishes a validation
its checkpoint left pending, and how a stop signal ends the run. playitback.engine.trainer builds the parts and hands
them to :func:`run_epochs` as callables, so every rule here is tested without building a model.

After each epoch, in order: bad-file check -> (a signal stopped the epoch: checkpoint, stop) -> the epoch's record
-> not-learning check -> checkpoint (atomic) -> validation -> best checkpoint (inside ``validate``).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from playitback.engine.evaluate import BAD_FILES
from playitback.engine.learning_check import NotLearningCheck
from playitback.engine.loop import TrainState
from playitback.utils import distributed as du
from playitback.utils.errors import UserError
from playitback.utils.logging import MetricWriter

logger = logging.getLogger(__name__)


class TooManyBadFilesError(UserError, RuntimeError):
    """More than DATA_LOADER.MAX_BAD_FRACTION of an epoch's items could not be read."""


@dataclass(frozen=True)
class EpochPeriods:
    """When a run saves and validates (SOLVER.MAX_EPOCH, TRAIN.EVAL_PERIOD, TRAIN.CHECKPOINT_PERIOD).

    Epochs are counted as finished epochs (1-based): the last epoch is always validated, and a validated epoch is
    always checkpointed first, so a failing validation loses no training.
    """

    max_epoch: int
    eval_period: int
    checkpoint_period: int

    def validates(self, epochs_done: int) -> bool:
        return epochs_done % self.eval_period == 0 or epochs_done == self.max_epoch

    def saves(self, epochs_done: int) -> bool:
        return self.validates(epochs_done) or epochs_done % self.checkpoint_period == 0


@dataclass(frozen=True)
class BadFileCheck:
    """Appends an epoch's unreadable-file messages (of every process) to OUTPUT_DIR/bad_files.txt and stops the run
    when more than ``max_fraction`` of the epoch's ``items_per_epoch`` items had to be replaced."""

    output_dir: Path
    max_fraction: float
    items_per_epoch: int

    def __call__(self, bad_files: list[str], replaced: int) -> None:
        gathered = [msg for part in du.all_gather_objects(bad_files) for msg in part]
        if not gathered:
            return
        replaced = int(du.all_reduce_sum(torch.tensor(float(replaced))).item())
        path = self.output_dir / BAD_FILES
        if du.is_main_process():
            with open(path, "a") as handle:
                handle.writelines(msg + "\n" for msg in gathered)
        logger.warning("%d unreadable item(s) were replaced this epoch (%d bad reads, see %s); first: %s", replaced,
                       len(gathered), path, gathered[0])
        if replaced > self.max_fraction * self.items_per_epoch:
            raise TooManyBadFilesError(
                f"{replaced} of {self.items_per_epoch} items of this epoch could not be read, more than "
                f"DATA_LOADER.MAX_BAD_FRACTION ({self.max_fraction}); see {path}")


def record_not_learning(check: NotLearningCheck, writer: MetricWriter, state: TrainState,
                        stats: dict[str, float]) -> None:
    """Logs and records (a "warning" record of metrics.jsonl) the not-learning warning the first time it holds."""
    train_loss = stats.get("loss_fused", math.nan)
    warning = check.update(state.epoch + 1, train_loss)
    if warning:
        logger.warning(warning)
        writer.write({"split": "warning", "kind": "not_learning", "epoch": state.epoch + 1, "train_loss": train_loss,
                      "chance_loss": check.chance, "message": warning}, step=state.global_step)


def run_epochs(state: TrainState, periods: EpochPeriods, iters_per_epoch: int,
               train_epoch: Callable[[list[str]], dict[str, float]], bad_files: BadFileCheck,
               learning: NotLearningCheck, writer: MetricWriter, save: Callable[[], None],
               validate: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Train from ``state`` to ``periods.max_epoch``.

    Args:
        state: where training stands (a resumed checkpoint's, or a fresh one); advanced in place.
        periods: when to save and validate.
        iters_per_epoch: loader batches per epoch.
        train_epoch: trains the rest of the epoch ``state.epoch`` from batch ``state.iteration``, appending the
            messages of unreadable files to its argument, and returns the epoch's stats ("replaced_items",
            "loss_fused", ...); it returns early, with ``state.iteration < iters_per_epoch``, when a stop signal came.
        bad_files, learning: the checks after every epoch.
        writer: receives the "train_epoch" records (stats, time_s, ram_gb) and the not-learning warning.
        save: writes the training checkpoint of ``state``.
        validate: validates the epoch just saved, clears ``state.pending_validation`` and returns the metrics.

    Returns:
        the last validation's metrics, or ``{"stopped": True, "epoch", "iteration"}`` when a signal stopped the run
        (its checkpoint is saved; the same command resumes).
    """
    val_metrics: dict[str, Any] = {}
    while state.epoch < periods.max_epoch:
        if state.iteration >= iters_per_epoch:
            if state.pending_validation:  # resumed from a checkpoint whose validation did not finish
                val_metrics = validate()
            state.epoch, state.iteration = state.epoch + 1, 0
            continue
        messages: list[str] = []
        epoch_start = time.perf_counter()
        stats = train_epoch(messages)
        bad_files(messages, int(stats["replaced_items"]))
        if state.iteration < iters_per_epoch:
            save()
            return {"stopped": True, "epoch": state.epoch, "iteration": state.iteration}
        writer.write({"split": "train_epoch", "epoch": state.epoch + 1, **stats,
                      "time_s": time.perf_counter() - epoch_start,
                      "ram_gb": psutil.Process().memory_info().rss / 2**30}, step=state.global_step)
        record_not_learning(learning, writer, state, stats)
        epochs_done = state.epoch + 1
        validate_now = periods.validates(epochs_done)
        if periods.saves(epochs_done):
            state.pending_validation = validate_now
            save()
        if validate_now:
            val_metrics = validate()
        state.epoch, state.iteration = epochs_done, 0
    return val_metrics

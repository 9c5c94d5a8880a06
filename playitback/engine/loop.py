"""The training loop: one epoch of optimiser steps over objects that are already built (no config, no model branch).

Every optimiser step runs, in this order: learning rate -> for each of its micro-batches (forward -> loss dict ->
finite/stop agreement of all processes -> scaled backward of loss / micro-batches, the gradient all-reduce only at the
last one) -> unscale -> clip -> optimiser step -> scaler update. With ``accumulation_steps`` = A the global batch is A
loader batches per process, and its gradient is the mean over all of them, as one large batch would give. A stop
request (SIGTERM, SIGUSR1) ends the epoch after the optimiser step under way, so no half-accumulated gradient is lost.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from playitback.config.choices import NONFINITE_POLICIES
from playitback.data.dataset import count_short
from playitback.engine.optim import LRSchedule, clip_gradients, set_lr
from playitback.engine.task import ClassificationTask
from playitback.utils import distributed as du

logger = logging.getLogger(__name__)



class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


class MetricSink(Protocol):
    """Where the loop writes its records (playitback.utils.logging.MetricWriter, or a test's list)."""

    def write(self, stats: dict[str, Any], step: int | None = None) -> None: ...


class StopRequest:
    """Set by SIGTERM or SIGUSR1 (SLURM preemption): the loop saves a checkpoint after the current step and stops."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@dataclass
class TrainState:
    """Where training stands: what a checkpoint records besides the modules."""

    epoch: int = 0  # the epoch being trained (0-based)
    iteration: int = 0  # loader batches of that epoch already done
    global_step: int = 0  # loader batches done over the run
    best_metric: float = -math.inf
    # The epoch's checkpoint is written and its validation has not finished (a resumed run runs it first).
    pending_validation: bool = False


@dataclass(frozen=True)
class LoopSettings:
    """How the loop steps.

    Attributes:
        max_epoch: epochs of the run (for the ETA and the log).
        log_period: write a train_iter record every this many loader batches (and at the epoch's end).
        accumulation_steps: loader batches per optimiser step (the global batch is their union over all processes).
        on_nonfinite_loss: "raise" stops naming the step and its loss terms; "skip" drops the whole optimiser step.
        clip_grad_val: clamp every gradient element to [-v, v], or None.
        clip_grad_l2norm: rescale the gradients to this global L2 norm at most, or None.
    """

    max_epoch: int
    log_period: int = 10
    accumulation_steps: int = 1
    on_nonfinite_loss: str = "raise"
    clip_grad_val: float | None = None
    clip_grad_l2norm: float | None = None

    def __post_init__(self) -> None:
        if self.accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {self.accumulation_steps}")
        if self.on_nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite_loss must be one of {NONFINITE_POLICIES}, got {self.on_nonfinite_loss!r}")


class _Averager:
    """Running means of scalar tensors, one count per key, synchronised with the host only when read."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1

    def read(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        stacked = du.all_reduce_mean(torch.stack([self.sums[k] / self.counts[k] for k in keys]))
        return dict(zip(keys, stacked.tolist()))


def first_batches(loader: Iterable[dict[str, Any]], count: int) -> Iterator[dict[str, Any]]:
    """The first `count` batches of a loader, lazily (TRAIN.MAX_ITERS_PER_EPOCH; the workers stop when it closes)."""
    for index, batch in enumerate(loader):
        if index >= count:
            return
        yield batch


def _gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP's no_sync() for the micro-batches before the last of an optimiser step (their gradients only add up
    locally), else nothing."""
    while not isinstance(model, DistributedDataParallel) and hasattr(model, "_orig_mod"):
        model = model._orig_mod
    if sync or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def train_one_epoch(task: ClassificationTask, loader: Iterable[dict[str, Any]], optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, schedule: LRSchedule, state: TrainState, iters_per_epoch: int,
                    settings: LoopSettings, writer: MetricSink, stop: StopRequest,
                    bad_files: list[str]) -> dict[str, float]:
    """Train from `state.iteration` to the end of `state.epoch`, or until a stop is requested.

    Args:
        task: batch -> (outputs, loss dict); its "loss" is back-propagated.
        loader: the epoch's remaining batches (``first_batches`` of the training loader).
        optimizer, scaler: stepped once per ``settings.accumulation_steps`` batches (fewer at the epoch's end).
        schedule: the learning rate at a fractional epoch, set at the start of every optimiser step.
        state: advanced in place (iteration, global_step).
        iters_per_epoch: loader batches of a full epoch.
        settings: logging, accumulation, non-finite policy and clipping.
        writer: receives a "train_iter" record every ``settings.log_period`` batches.
        stop: when set, the epoch ends after the optimiser step under way.
        bad_files: the messages of unreadable files are appended here.

    Returns:
        The epoch's mean loss terms, "skipped_steps" (optimiser steps dropped for a non-finite loss) and
        "replaced_items" (unreadable items the dataset replaced) and "short_items" (the short reads among the bad
        files met).
    """
    model = task.model
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    window, epoch_avg = _Averager(), _Averager()
    tic = data_tic = time.perf_counter()
    data_time = 0.0
    window_batches = skipped_steps = replaced_items = short_items = 0
    first_iteration = state.iteration
    group_size, group_finite, stop_pending, lr = 1, True, False, math.nan
    progress = tqdm(total=iters_per_epoch, initial=state.iteration, desc=f"epoch {state.epoch + 1}",
                    disable=not (sys.stdout.isatty() and du.is_main_process()), leave=False, dynamic_ncols=True)
    for batch in loader:
        data_time += time.perf_counter() - data_tic
        position = (state.iteration - first_iteration) % settings.accumulation_steps
        if position == 0:
            group_size = min(settings.accumulation_steps, iters_per_epoch - state.iteration)
            group_finite = True
            lr = schedule(state.epoch + state.iteration / iters_per_epoch)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
        last_in_group = position + 1 == group_size
        bad_files.extend(batch["skipped"])
        replaced_items += batch["replaced"]
        short_items += count_short(batch["skipped"])
        with _gradient_sync(model, sync=last_in_group):
            _, losses, _ = task.step(batch, train=True)
            finite, stop_now = _step_agreement(losses["loss"], stop.requested)
            if finite and group_finite:
                scaler.scale(losses["loss"] / group_size).backward()
        stop_pending = stop_pending or stop_now
        if finite:
            window.add(losses)
            epoch_avg.add(losses)
        else:
            terms = {k: float(v.detach()) for k, v in losses.items()}
            where = f"epoch {state.epoch + 1}, iteration {state.iteration + 1}, clips {batch['index'].tolist()}"
            if settings.on_nonfinite_loss == "raise":
                raise NonFiniteLossError(
                    f"non-finite loss at {where} (in this or another process): {terms}. Lower SOLVER.BASE_LR, enable "
                    "SOLVER.CLIP_GRAD_L2NORM, or set TRAIN.ON_NONFINITE_LOSS skip to drop such steps"
                )
            # Every process drops the whole step together, so no gradient all-reduce is left unmatched.
            logger.warning("skipping the optimiser step with a non-finite loss at %s: %s", where, terms)
            group_finite = False
        if last_in_group:
            if group_finite:
                scaler.unscale_(optimizer)
                grad_norm = clip_gradients(trainable, settings.clip_grad_val, settings.clip_grad_l2norm)
                scaler.step(optimizer)
                scaler.update()
                if grad_norm is not None:
                    window.add({"grad_norm": grad_norm})
            else:
                optimizer.zero_grad(set_to_none=True)
                skipped_steps += 1
        state.iteration += 1
        state.global_step += 1
        window_batches += 1
        progress.update()
        if state.iteration % settings.log_period == 0 or state.iteration == iters_per_epoch:
            # Reading the window waits for the device to finish its steps (backward and optimiser included), so the
            # clock is read after it: on a GPU, dt is then the steps' real time, not the time to queue them.
            window_means = window.read()
            step_s = (time.perf_counter() - tic) / window_batches
            stats = {"split": "train_iter", "epoch": f"{state.epoch + 1}/{settings.max_epoch}",
                     "iter": f"{state.iteration}/{iters_per_epoch}", "lr": lr, **window_means,
                     "dt": step_s, "dt_data": data_time / window_batches,
                     "eta": _eta(step_s, state, iters_per_epoch, settings.max_epoch)}
            writer.write(stats, step=state.global_step)
            window, tic, data_time, window_batches = _Averager(), time.perf_counter(), 0.0, 0
        if stop_pending and last_in_group:
            break
        data_tic = time.perf_counter()
    progress.close()
    result = epoch_avg.read()
    result["skipped_steps"] = float(skipped_steps)
    result["replaced_items"] = float(replaced_items)
    result["short_items"] = float(short_items)
    return result


def _step_agreement(loss: Tensor, stop_requested: bool) -> tuple[bool, bool]:
    """(whether the loss is finite in every process, whether any process was asked to stop).

    The batch's only host synchronisation: both answers come from one all-reduce and one read."""
    flags = torch.stack([(~torch.isfinite(loss.detach())).float().reshape(()),
                         torch.full((), float(stop_requested), device=loss.device)])
    nonfinite, stops = du.all_reduce_sum(flags).tolist()
    return nonfinite == 0, stops > 0


def _eta(seconds_per_iter: float, state: TrainState, iters_per_epoch: int, max_epoch: int) -> str:
    remaining = (max_epoch - state.epoch) * iters_per_epoch - state.iteration
    return time.strftime("%H:%M:%S", time.gmtime(max(remaining, 0) * seconds_per_iter))

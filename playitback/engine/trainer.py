"""Training, validation and testing: `train(cfg)` and `test(cfg)`, what tools/run_net.py launches in every process.

The loop is thin glue over a :class:`ClassificationTask`; its effects are written out in order (no hooks):
per iteration LR -> forward -> loss dict -> finite check -> scaled backward -> clip -> step; per epoch validate ->
checkpoint (atomic) -> best checkpoint. A checkpoint holds everything an exact resumption needs (model, optimiser,
scaler, RNG states, the augmentation generator and the position inside the epoch), and SIGTERM/SIGUSR1 save one at
the next step and stop (SLURM preemption).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from fvcore.common.config import CfgNode
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from playitback.config import derived, dump_config
from playitback.data.augment import MixUp
from playitback.data.build import build_dataset, build_loader, build_pyramid, frontend_on_device
from playitback.data.dataset import AudioClipDataset
from playitback.data.records import ClipRecord
from playitback.engine import checkpoint as ckpt
from playitback.engine.learning_check import NotLearningCheck, chance_loss
from playitback.engine.optim import (
    build_optimizer,
    clip_gradients,
    layer_decay_scales,
    lr_at,
    param_groups,
    set_lr,
)
from playitback.engine.reproducibility import (
    PER_CLASS_FILE,
    audio_coverage,
    task_class_names,
    write_clip_ids,
    write_per_class_csv,
)
from playitback.engine.task import ClassificationTask, SpecAugmentSettings
from playitback.losses import PlayItBackLoss
from playitback.metrics import ViewEnsemble, classification_metrics
from playitback.models import build_model
from playitback.models.replay import replayed_seconds
from playitback.models.weights import from_original_key
from playitback.utils import distributed as du
from playitback.utils.logging import MetricWriter, setup_logging

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite."""


class TooManyBadFilesError(RuntimeError):
    """More than DATA_LOADER.MAX_BAD_FRACTION of an epoch's items could not be read."""


class RandomWeightsError(RuntimeError):
    """Weights that no checkpoint provided would be trained on frozen or tested (see MODEL.ALLOW_RANDOM_WEIGHTS)."""


# ---------------------------------------------------------------------------------------------------------------------
# Set-up shared by train and test.
# ---------------------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (each process passes seed + rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(cfg: CfgNode) -> torch.device:
    """The process's device: its GPU when NUM_GPUS > 0, else the CPU.

    On the CPU the cores are shared between the training processes and their DataLoader workers, so each training
    process takes cores // (processes * (workers + 1)) threads (at least 1): oversubscribed OpenMP threads spin
    against the workers (measured on a 2-core machine: a PlayItBack step took 10 s with 2 threads next to 2 busy
    workers, 0.4 s with 1).
    """
    if cfg.NUM_GPUS > 0:
        if not torch.cuda.is_available():
            raise RuntimeError(f"NUM_GPUS is {cfg.NUM_GPUS} but no GPU is visible; pass NUM_GPUS 0 to run on the CPU")
        return torch.device("cuda", torch.cuda.current_device())
    if "OMP_NUM_THREADS" not in os.environ:
        share = (os.cpu_count() or 1) // (du.get_world_size() * (cfg.DATA_LOADER.NUM_WORKERS + 1))
        torch.set_num_threads(max(1, share))
    return torch.device("cpu")


def amp_dtype(cfg: CfgNode, device: torch.device, train: bool = True) -> torch.dtype | None:
    """Autocast dtype of training (TRAIN.MIXED_PRECISION) or evaluation (TEST.MIXED_PRECISION), or None (fp32), with
    TRAIN.AMP_DTYPE. fp16 autocast is a GPU feature; the CPU uses bfloat16."""
    if not (cfg.TRAIN.MIXED_PRECISION if train else cfg.TEST.MIXED_PRECISION):
        return None
    if device.type == "cpu":
        return torch.bfloat16 if cfg.TRAIN.AMP_DTYPE == "bfloat16" else None
    return torch.bfloat16 if cfg.TRAIN.AMP_DTYPE == "bfloat16" else torch.float16


def build_task(cfg: CfgNode, model: nn.Module, device: torch.device, train: bool) -> ClassificationTask:
    """The task of a config: loss, on-device front-end, SpecAugment and MixUp (training only), autocast."""
    counts = derived.class_counts(cfg)
    loss_fn = PlayItBackLoss(counts, cfg.DATA.MULTI_LABEL, aux_weight=cfg.MODEL.AUX_LOSS_WEIGHT,
                             rank_weight=cfg.MODEL.RANK_LOSS_WEIGHT, rank_margin=cfg.MODEL.RANK_MARGIN,
                             area_weight=cfg.SALIENCY.AREA_WEIGHT, contiguity_weight=cfg.SALIENCY.CONTIGUITY_WEIGHT,
                             budget=cfg.SALIENCY.BUDGET)
    augment = cfg.SPEC_AUGMENT
    mixup = cfg.MIXUP
    return ClassificationTask(
        model,
        loss_fn,
        class_counts=counts,
        multi_label=cfg.DATA.MULTI_LABEL,
        device=device,
        pyramid=build_pyramid(cfg).to(device) if frontend_on_device(cfg) else None,
        spec_augment_settings=SpecAugmentSettings(augment.TIME_WARP, augment.FREQ_MASK, augment.NUM_FREQ_MASKS,
                                                  augment.TIME_MASK, augment.NUM_TIME_MASKS)
        if train and augment.ENABLE else None,
        mixup=MixUp(counts, multi_label=cfg.DATA.MULTI_LABEL, mixup_alpha=mixup.ALPHA, cutmix_alpha=mixup.CUTMIX_ALPHA,
                    prob=mixup.PROB, switch_prob=mixup.SWITCH_PROB, label_smoothing=mixup.LABEL_SMOOTH_VALUE)
        if train and mixup.ENABLE else None,
        amp_dtype=amp_dtype(cfg, device) if train else None,
        eval_amp_dtype=amp_dtype(cfg, device, train=False),
        replay_events=cfg.MODEL.REPLAY == "events",
        generator=torch.Generator().manual_seed(cfg.RNG_SEED * 1000 + du.get_rank()),
    )


def build_training_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser of SOLVER.* over the model's trainable parameters (no weight decay on 1-D ones; layer-wise LR
    decay of the encoder with SOLVER.LAYER_DECAY < 1)."""
    scales = layer_decay_scales(model, cfg.SOLVER.LAYER_DECAY) if cfg.SOLVER.LAYER_DECAY < 1 else None
    return build_optimizer(
        param_groups(model, cfg.SOLVER.WEIGHT_DECAY, zero_wd_1d=cfg.SOLVER.ZERO_WD_1D_PARAM, lr_scales=scales),
        cfg.SOLVER.OPTIMIZING_METHOD, derived.base_lr(cfg), momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV, dampening=cfg.SOLVER.DAMPENING,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Parameter counts in millions: total and trainable, per top-level module."""
    counts = {"params_M": sum(p.numel() for p in model.parameters()) / 1e6,
              "trainable_params_M": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6}
    for name, child in model.named_children():
        counts[f"{name}_params_M"] = sum(p.numel() for p in child.parameters()) / 1e6
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# Preemption.
# ---------------------------------------------------------------------------------------------------------------------
class StopRequest:
    """Set by SIGTERM or SIGUSR1 (SLURM preemption): the loop saves a checkpoint at the next step and stops."""

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


# ---------------------------------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Where training stands: what a checkpoint records besides the modules."""

    epoch: int = 0  # the epoch being trained (0-based)
    iteration: int = 0  # batches of that epoch already done
    global_step: int = 0
    best_metric: float = -math.inf
    # The epoch's checkpoint is written and its validation has not finished (a resumed run runs it first).
    pending_validation: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def primary_metric(metrics: dict[str, float], cfg: CfgNode) -> float:
    """The validation metric that selects checkpoint_best (higher is better): action top-1 (EPIC), mAP (multi-label)
    or top-1 accuracy."""
    if cfg.MODEL.MULTITASK:
        return metrics["action_top1_acc"]
    return metrics["mAP"] if cfg.DATA.MULTI_LABEL else metrics["top1_acc"]


def _checkpoint_state(cfg: CfgNode, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      state: TrainState, random_states: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "epoch": state.epoch,
        "iteration_in_epoch": state.iteration,
        "global_step": state.global_step,
        "best_metric": state.best_metric,
        "pending_validation": state.pending_validation,
        "model_state": unwrap(model).state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "scaler_state": scaler.state_dict(),
        "cfg": dump_config(cfg),
        # One entry per process (index = rank): every process resumes its own random streams.
        "rng_states": random_states,
    }


def save_training_checkpoint(cfg: CfgNode, model: nn.Module, optimizer: torch.optim.Optimizer,
                             scaler: torch.amp.GradScaler, task: ClassificationTask, state: TrainState) -> Path:
    """Write OUTPUT_DIR/checkpoints/checkpoint_epoch_{epoch+1:05d}.pyth atomically, on the main process, with the
    random states of every process; returns its path."""
    random_states = du.all_gather_objects({"rng_state": ckpt.rng_state(),
                                           "augment_generator_state": task.generator.get_state()})
    path = ckpt.checkpoint_path(cfg.OUTPUT_DIR, state.epoch + 1)
    if du.is_main_process():
        ckpt.save_checkpoint(path, _checkpoint_state(cfg, model, optimizer, scaler, state, random_states))
        logger.info("saved %s (epoch %d, iteration %d)", path, state.epoch + 1, state.iteration)
    du.barrier()
    return path


def _restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any], source: Path | str) -> None:
    """Load an optimiser state whose parameter groups match this run's; otherwise start fresh, saying why."""
    saved_sizes = [len(group["params"]) for group in saved.get("param_groups", [])]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != sizes:
        logger.warning("%s: its optimiser state has parameter groups of %s parameters, this run's %s (another model, "
                       "MODEL.FREEZE_ENCODER or SOLVER.LAYER_DECAY?): the optimiser state starts fresh", source,
                       saved_sizes, sizes)
        return
    optimizer.load_state_dict(saved)


def _restore_scaler(scaler: torch.amp.GradScaler, saved: dict[str, Any], source: Path | str) -> None:
    """Load a GradScaler state when this run scales and the checkpoint has one; skip what does not apply (a
    checkpoint saved with the scaler disabled holds {}), with one log line."""
    if not scaler.is_enabled():
        if saved:
            logger.info("%s: this run does not scale its loss (bfloat16 or float32), so the checkpoint's GradScaler "
                        "state is not used", source)
        return
    if not saved:
        logger.info("%s holds no GradScaler state (saved without fp16 scaling): the loss scale starts at %g", source,
                    scaler.get_scale())
        return
    scaler.load_state_dict(saved)


def _resume_run(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                task: ClassificationTask, path: Path, checkpoint: dict[str, Any]) -> TrainState:
    """Continue a run exactly from its own checkpoint: modules, optimiser, scaler, random streams, position."""
    # A run started before the saliency modules were named holds their original keys (saliency_slots.{i}.0/.3).
    unwrap(model).load_state_dict({from_original_key(k): v for k, v in checkpoint["model_state"].items()})
    _restore_optimizer(optimizer, checkpoint["optimizer_state"], path)
    _restore_scaler(scaler, checkpoint["scaler_state"], path)
    states = checkpoint["rng_states"]
    if len(states) != du.get_world_size():
        logger.warning("checkpoint holds random states of %d process(es), this job has %d: the resumed run is "
                       "valid but not bit-identical to an uninterrupted one", len(states), du.get_world_size())
    mine = states[du.get_rank() % len(states)]
    ckpt.set_rng_state(mine["rng_state"])
    task.generator.set_state(mine["augment_generator_state"])
    state = TrainState(checkpoint["epoch"], checkpoint["iteration_in_epoch"], checkpoint["global_step"],
                       checkpoint["best_metric"], checkpoint.get("pending_validation", False))
    logger.info("resumed from %s: epoch %d, iteration %d", path, state.epoch + 1, state.iteration)
    return state


def _start_from_checkpoint(cfg: CfgNode, model: nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: torch.amp.GradScaler) -> tuple[TrainState, list[str]]:
    """Start from TRAIN.CHECKPOINT_FILE_PATH: its weights, and (for this project's own training checkpoint of this
    model, unless TRAIN.CHECKPOINT_EPOCH_RESET) its optimiser, scaler, schedule and epoch. Returns the state and the
    model keys the checkpoint left unfilled.

    Anything else (an original PlayItBack checkpoint, whose optimiser holds every parameter and whose epoch is its
    last; an encoder or MViTv2 checkpoint) gives weights only.
    """
    path = cfg.TRAIN.CHECKPOINT_FILE_PATH
    checkpoint, report = ckpt.load_weights(unwrap(model), path, cfg.TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN)
    if not ckpt.is_training_checkpoint(checkpoint):
        logger.info("%s is not a playitback training checkpoint: loaded its weights only; the optimiser, GradScaler, "
                    "schedule and epoch start fresh", path)
        return TrainState(), report.missing
    if report.missing or report.remapped or cfg.TRAIN.CHECKPOINT_EPOCH_RESET:
        why = "TRAIN.CHECKPOINT_EPOCH_RESET" if cfg.TRAIN.CHECKPOINT_EPOCH_RESET else "it is another model's"
        logger.info("%s: loaded its weights only (%s); the optimiser, GradScaler, schedule and epoch start fresh",
                    path, why)
        return TrainState(), report.missing
    _restore_optimizer(optimizer, checkpoint["optimizer_state"], path)
    _restore_scaler(scaler, checkpoint["scaler_state"], path)
    state = TrainState(epoch=int(checkpoint["epoch"]) + 1)
    logger.info("%s: continuing its schedule at epoch %d", path, state.epoch + 1)
    return state, []


def _require_encoder_weights(cfg: CfgNode, model: nn.Module, unfilled: Sequence[str]) -> None:
    """A frozen encoder must come from a checkpoint: PlayItBack would otherwise train on random features."""
    if derived.is_encoder_only(cfg) or not cfg.MODEL.FREEZE_ENCODER:
        return
    encoder_keys = [key for key in unwrap(model).state_dict() if key.startswith("encoder.")]
    random = [key for key in unfilled if key.startswith("encoder.")]
    if not random:
        return
    shown = ", ".join(random[:3]) + (", ..." if len(random) > 3 else "")
    message = (f"MODEL.FREEZE_ENCODER is True but {len(random)} of {len(encoder_keys)} encoder weights come from no "
               f"checkpoint ({shown}): the frozen encoder would stay at its random initialisation for the whole run. "
               "Set TRAIN.CHECKPOINT_FILE_PATH to the stage-1 checkpoint (<stage-1 OUTPUT_DIR>/checkpoints/"
               "checkpoint_best.pyth) or an MViTv2 checkpoint, or MODEL.ALLOW_RANDOM_WEIGHTS True for a smoke test")
    if not cfg.MODEL.ALLOW_RANDOM_WEIGHTS:
        raise RandomWeightsError(message)
    logger.warning("%s (allowed by MODEL.ALLOW_RANDOM_WEIGHTS)", message)


def _resume(cfg: CfgNode, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            task: ClassificationTask) -> TrainState:
    """Auto-resume from the newest valid checkpoint of OUTPUT_DIR, else start from TRAIN.CHECKPOINT_FILE_PATH, else
    from scratch; a frozen encoder must have received its weights."""
    found = ckpt.latest_valid_checkpoint(cfg.OUTPUT_DIR) if cfg.TRAIN.AUTO_RESUME else None
    if found is not None:
        return _resume_run(model, optimizer, scaler, task, *found)
    state, unfilled = TrainState(), list(unwrap(model).state_dict())
    if cfg.TRAIN.CHECKPOINT_FILE_PATH:
        state, unfilled = _start_from_checkpoint(cfg, model, optimizer, scaler)
    _require_encoder_weights(cfg, model, unfilled)
    return state


def wrap_model(cfg: CfgNode, model: nn.Module, device: torch.device) -> nn.Module:
    """The model as a run trains and evaluates it: on `device`, under DDP with several processes, compiled with
    MODEL.COMPILE (MODEL.COMPILE_BACKEND, MODEL.COMPILE_MODE)."""
    model = model.to(device)
    if du.get_world_size() > 1:
        # Every trainable parameter gets a gradient at every step (the saliency trains through its own loss), so
        # DDP needs no find_unused_parameters.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=False)
    if cfg.MODEL.COMPILE:
        mode = cfg.MODEL.COMPILE_MODE
        model = torch.compile(model, backend=cfg.MODEL.COMPILE_BACKEND, mode=None if mode == "default" else mode)
    return model


class _Averager:
    """Running sums of scalar tensors, synchronised with the host only when read (at LOG_PERIOD)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, Tensor]) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += 1

    def read(self) -> dict[str, float]:
        if not self.count:
            return {}
        keys = sorted(self.sums)
        stacked = du.all_reduce_mean(torch.stack([self.sums[k] for k in keys]) / self.count)
        return dict(zip(keys, stacked.tolist()))


def train_one_epoch(cfg: CfgNode, task: ClassificationTask, loader: Iterable[dict[str, Any]],
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, state: TrainState,
                    iters_per_epoch: int, writer: MetricWriter, stop: StopRequest,
                    bad_files: list[str]) -> dict[str, float]:
    """Train from `state.iteration` to the end of `state.epoch` (or until a stop is requested). Updates `state` and
    appends the messages of unreadable files to `bad_files`; the returned stats count the replaced items."""
    model = task.model
    model.train()
    solver = cfg.SOLVER
    window, epoch_avg = _Averager(), _Averager()
    tic = time.perf_counter()
    data_time = 0.0
    data_tic = time.perf_counter()
    skipped_steps = 0
    replaced_items = 0
    progress = tqdm(total=iters_per_epoch, initial=state.iteration, desc=f"epoch {state.epoch + 1}",
                    disable=not (sys.stdout.isatty() and du.is_main_process()), leave=False, dynamic_ncols=True)
    for batch in loader:
        data_time += time.perf_counter() - data_tic
        lr = lr_at(state.epoch + state.iteration / iters_per_epoch, policy=solver.LR_POLICY,
                   base_lr=derived.base_lr(cfg), max_epoch=solver.MAX_EPOCH, warmup_epochs=solver.WARMUP_EPOCHS,
                   warmup_start_lr=solver.WARMUP_START_LR, cosine_end_lr=solver.COSINE_END_LR,
                   cosine_after_warmup=solver.COSINE_AFTER_WARMUP, steps=solver.STEPS, lrs=solver.LRS)
        set_lr(optimizer, lr)
        bad_files.extend(batch["skipped"])
        replaced_items += batch["replaced"]
        _, losses, _ = task.step(batch, train=True)
        loss = losses["loss"]
        finite, stop_now = _step_agreement(loss, stop.requested)
        if not finite:
            terms = {k: float(v) for k, v in losses.items()}
            where = f"epoch {state.epoch + 1}, iteration {state.iteration + 1}, clips {batch['index'].tolist()}"
            if cfg.TRAIN.ON_NONFINITE_LOSS == "raise":
                raise NonFiniteLossError(
                    f"non-finite loss at {where} (in this or another process): {terms}. Lower SOLVER.BASE_LR, enable "
                    "SOLVER.CLIP_GRAD_L2NORM, or set TRAIN.ON_NONFINITE_LOSS skip to drop such steps"
                )
            # Every process skips the step together, so no gradient all-reduce is left unmatched.
            logger.warning("skipping step with a non-finite loss at %s: %s", where, terms)
            skipped_steps += 1
        else:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = clip_gradients([p for p in model.parameters() if p.requires_grad], solver.CLIP_GRAD_VAL,
                                       solver.CLIP_GRAD_L2NORM)
            scaler.step(optimizer)
            scaler.update()
            step_values = {**losses}
            if grad_norm is not None:
                step_values["grad_norm"] = grad_norm
            window.add(step_values)
            epoch_avg.add(losses)
        state.iteration += 1
        state.global_step += 1
        progress.update()
        if state.iteration % cfg.LOG_PERIOD == 0 or state.iteration == iters_per_epoch:
            # Reading the window waits for the device to finish its steps (backward and optimiser included), so the
            # clock is read after it: on a GPU, dt is then the steps' real time, not the time to queue them.
            window_means = window.read()
            elapsed = time.perf_counter() - tic
            stats = {"split": "train_iter", "epoch": f"{state.epoch + 1}/{solver.MAX_EPOCH}",
                     "iter": f"{state.iteration}/{iters_per_epoch}", "lr": lr, **window_means,
                     "dt": elapsed / max(window.count, 1), "dt_data": data_time / max(window.count, 1),
                     "eta": _eta(elapsed / max(window.count, 1), state, iters_per_epoch, solver.MAX_EPOCH)}
            writer.write(stats, step=state.global_step)
            window, tic, data_time = _Averager(), time.perf_counter(), 0.0
        if stop_now:
            break
        data_tic = time.perf_counter()
    progress.close()
    result = epoch_avg.read()
    result["skipped_steps"] = float(skipped_steps)
    result["replaced_items"] = float(replaced_items)
    return result


def _step_agreement(loss: Tensor, stop_requested: bool) -> tuple[bool, bool]:
    """(whether the loss is finite in every process, whether any process was asked to stop).

    The step's only host synchronisation: both answers come from one all-reduce and one read."""
    flags = torch.stack([(~torch.isfinite(loss.detach())).float().reshape(()),
                         torch.full((), float(stop_requested), device=loss.device)])
    nonfinite, stops = du.all_reduce_sum(flags).tolist()
    return nonfinite == 0, stops > 0


def _eta(seconds_per_iter: float, state: TrainState, iters_per_epoch: int, max_epoch: int) -> str:
    remaining = (max_epoch - state.epoch) * iters_per_epoch - state.iteration
    return time.strftime("%H:%M:%S", time.gmtime(max(remaining, 0) * seconds_per_iter))


def _check_bad_files(cfg: CfgNode, bad_files: list[str], replaced: int, num_items: int) -> None:
    """Log the bad files of an epoch to OUTPUT_DIR/bad_files.txt and stop when too many items had to be replaced."""
    gathered = [msg for part in du.all_gather_objects(bad_files) for msg in part]
    if not gathered:
        return
    replaced = int(du.all_reduce_sum(torch.tensor(float(replaced))).item())
    if du.is_main_process():
        with open(Path(cfg.OUTPUT_DIR) / "bad_files.txt", "a") as handle:
            handle.writelines(msg + "\n" for msg in gathered)
    logger.warning("%d unreadable item(s) were replaced this epoch (%d bad reads, see %s); first: %s", replaced,
                   len(gathered), Path(cfg.OUTPUT_DIR) / "bad_files.txt", gathered[0])
    if replaced > cfg.DATA_LOADER.MAX_BAD_FRACTION * num_items:
        raise TooManyBadFilesError(
            f"{replaced} of {num_items} items of this epoch could not be read, more than "
            f"DATA_LOADER.MAX_BAD_FRACTION ({cfg.DATA_LOADER.MAX_BAD_FRACTION}); see {cfg.OUTPUT_DIR}/bad_files.txt"
        )


def prepare_output_dir(cfg: CfgNode) -> None:
    """Create OUTPUT_DIR/checkpoints, start logging there and save the config."""
    if du.is_main_process():
        (Path(cfg.OUTPUT_DIR) / "checkpoints").mkdir(parents=True, exist_ok=True)
        (Path(cfg.OUTPUT_DIR) / "config.yaml").write_text(dump_config(cfg))
    du.barrier()
    setup_logging(cfg.OUTPUT_DIR)


def build_writer(cfg: CfgNode) -> MetricWriter:
    """The metric writer: metrics.jsonl always, TensorBoard and wandb when enabled."""
    tensorboard_dir = None
    if cfg.TENSORBOARD.ENABLE:
        tensorboard_dir = cfg.TENSORBOARD.LOG_DIR or os.path.join(cfg.OUTPUT_DIR, f"runs-{cfg.TRAIN.DATASET}")
    wandb_config = None
    if cfg.WANDB.ENABLE:
        wandb_config = {"project": cfg.WANDB.PROJECT, "run_id": cfg.WANDB.RUN_ID, "mode": cfg.WANDB.MODE,
                        "config": json.loads(json.dumps(cfg, default=str)), "output_dir": cfg.OUTPUT_DIR}
    return MetricWriter(cfg.OUTPUT_DIR, tensorboard_dir, wandb_config)


def train(cfg: CfgNode) -> dict[str, Any]:
    """Train (and validate) as the config says; returns the last validation metrics."""
    prepare_output_dir(cfg)
    rank, world = du.get_rank(), du.get_world_size()
    seed_everything(cfg.RNG_SEED + rank)
    device = select_device(cfg)
    # The data first: a wrong path or list fails before any model is built.
    train_set = build_dataset(cfg, "train", output_dir=Path(cfg.OUTPUT_DIR))
    train_loader = build_loader(cfg, train_set, "train", rank, world)
    val_set = build_dataset(cfg, "val", output_dir=Path(cfg.OUTPUT_DIR))
    val_loader = build_loader(cfg, val_set, "val", rank, world)
    model = build_model(cfg)
    if cfg.LOG_MODEL_INFO:
        logger.info("model %s: %s", cfg.MODEL.MODEL_NAME, json.dumps(count_parameters(model)))
    model = wrap_model(cfg, model, device)
    optimizer = build_training_optimizer(cfg, unwrap(model))
    task = build_task(cfg, model, device, train=True)
    scaler = torch.amp.GradScaler(device.type, enabled=task.amp_dtype == torch.float16)
    state = _resume(cfg, model, optimizer, scaler, task)

    if du.is_main_process():
        write_clip_ids(cfg.OUTPUT_DIR, "train", train_set.records)
        write_clip_ids(cfg.OUTPUT_DIR, "val", val_set.records)
    sampler = train_loader.sampler
    iters_per_epoch = sampler.batches_per_epoch
    if cfg.TRAIN.MAX_ITERS_PER_EPOCH:
        iters_per_epoch = min(iters_per_epoch, cfg.TRAIN.MAX_ITERS_PER_EPOCH)
    logger.info("training on %d clips (%d iterations per epoch, %d process(es)), validating on %d clips",
                len(train_set), iters_per_epoch, world, len(val_set))
    _log_batch_and_lr(cfg, world)
    writer = build_writer(cfg)
    learning = NotLearningCheck(chance_loss([r.labels for r in train_set.records], derived.class_counts(cfg),
                                            cfg.DATA.MULTI_LABEL), cfg.TRAIN.NOT_LEARNING_EPOCHS,
                                cfg.TRAIN.NOT_LEARNING_MARGIN)
    stop = StopRequest()
    stop.install()
    val_metrics: dict[str, Any] = {}
    try:
        while state.epoch < cfg.SOLVER.MAX_EPOCH:
            if state.iteration >= iters_per_epoch:
                if state.pending_validation:  # resumed from a checkpoint whose validation did not finish
                    val_metrics = validate_epoch(cfg, task, val_loader, val_set, state, writer)
                state.epoch, state.iteration = state.epoch + 1, 0
                continue
            train_set.set_epoch(state.epoch)
            sampler.set_epoch(state.epoch)
            sampler.set_start_batch(state.iteration)
            bad_files: list[str] = []
            epoch_start = time.perf_counter()
            epoch_stats = train_one_epoch(cfg, task, first_batches(train_loader, iters_per_epoch - state.iteration),
                                          optimizer, scaler, state, iters_per_epoch, writer, stop, bad_files)
            _check_bad_files(cfg, bad_files, int(epoch_stats["replaced_items"]),
                             iters_per_epoch * cfg.TRAIN.BATCH_SIZE)
            if state.iteration < iters_per_epoch:  # stopped by a signal
                save_training_checkpoint(cfg, model, optimizer, scaler, task, state)
                logger.info("stopped by %s; resume with the same command", stop.signal_name or "a signal")
                return {"stopped": True, "epoch": state.epoch, "iteration": state.iteration}
            writer.write({"split": "train_epoch", "epoch": state.epoch + 1, **epoch_stats,
                          "time_s": time.perf_counter() - epoch_start,
                          "ram_gb": psutil.Process().memory_info().rss / 2**30}, step=state.global_step)
            warning = learning.update(state.epoch + 1, epoch_stats.get("loss_fused", math.nan))
            if warning:
                logger.warning(warning)
                writer.write({"split": "warning", "kind": "not_learning", "epoch": state.epoch + 1,
                              "train_loss": epoch_stats["loss_fused"], "chance_loss": learning.chance,
                              "message": warning}, step=state.global_step)
            last = state.epoch + 1 == cfg.SOLVER.MAX_EPOCH
            validate = (state.epoch + 1) % cfg.TRAIN.EVAL_PERIOD == 0 or last
            # Saved before validating, so a failing validation does not lose the epoch; the checkpoint says its
            # validation is pending, and a resumed run runs it.
            if validate or (state.epoch + 1) % cfg.TRAIN.CHECKPOINT_PERIOD == 0:
                state.pending_validation = validate
                save_training_checkpoint(cfg, model, optimizer, scaler, task, state)
            if validate:
                val_metrics = validate_epoch(cfg, task, val_loader, val_set, state, writer)
            state.epoch, state.iteration = state.epoch + 1, 0
    finally:
        stop.restore()
        writer.close()
    return val_metrics


def validate_epoch(cfg: CfgNode, task: ClassificationTask, loader: Iterable[dict[str, Any]],
                   dataset: AudioClipDataset, state: TrainState, writer: MetricWriter) -> dict[str, Any]:
    """Validate the epoch just trained, whose checkpoint is already written: record the metrics and, when they are the
    best so far, copy that checkpoint to checkpoint_best.pyth."""
    metrics, _ = evaluate(cfg, task, loader, dataset, split="val")
    score = primary_metric(metrics, cfg)
    is_best = score > state.best_metric
    state.best_metric = max(state.best_metric, score)
    state.pending_validation = False
    writer.write({"split": "val_epoch", "epoch": state.epoch + 1, **metrics, "best": state.best_metric},
                 step=state.global_step)
    if is_best and du.is_main_process():
        ckpt.copy_checkpoint(ckpt.checkpoint_path(cfg.OUTPUT_DIR, state.epoch + 1),
                             ckpt.best_checkpoint_path(cfg.OUTPUT_DIR))
        logger.info("epoch %d is the best so far (%.4f): copied its checkpoint to %s", state.epoch + 1, score,
                    ckpt.best_checkpoint_path(cfg.OUTPUT_DIR))
    du.barrier()
    return metrics


def _log_batch_and_lr(cfg: CfgNode, world: int) -> None:
    """One line: the global batch, how it is split, and the peak LR it gets (SOLVER.BASE_LR_BATCH_SIZE)."""
    solver = cfg.SOLVER
    rule = (f"BASE_LR {solver.BASE_LR} x {solver.BASE_LR_SCALE_RULE}({cfg.TRAIN.BATCH_SIZE} / "
            f"{solver.BASE_LR_BATCH_SIZE})" if solver.BASE_LR_BATCH_SIZE else "SOLVER.BASE_LR")
    logger.info("global batch %d = %d per process x %d process(es); peak learning rate %.6g (%s)",
                cfg.TRAIN.BATCH_SIZE, derived.per_process_batch(cfg.TRAIN.BATCH_SIZE, world), world,
                derived.base_lr(cfg), rule)


def first_batches(loader: Iterable[dict[str, Any]], count: int) -> Iterable[dict[str, Any]]:
    """The first `count` batches of a loader, lazily (TRAIN.MAX_ITERS_PER_EPOCH; the workers stop when it closes)."""
    for index, batch in enumerate(loader):
        if index >= count:
            return
        yield batch


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(cfg: CfgNode, task: ClassificationTask, loader: Iterable[dict[str, Any]], dataset: AudioClipDataset,
             collect_segments: bool = False, split: str = "val") -> tuple[dict[str, float], dict[str, Any]]:
    """Run the model over an evaluation split (every item once over all processes), ensemble the views of each clip
    and compute the metrics on the main process (broadcast to all).

    Items whose file could not be decoded (ON_BAD_FILE skip) are left out, named in OUTPUT_DIR/bad_files.txt and
    counted; the metrics then say how many clips they cover: ``clips`` (scored), ``clips_unreadable``,
    ``clips_missing`` (listed but absent at start) and ``clips_listed``.

    Returns (metrics, details): details holds "scores" [N, K], "labels", "uids" of the scored clips, and with
    collect_segments the replayed segments of every clip, view and playback.
    """
    model = task.model
    model.eval()
    local: dict[str, list[Any]] = defaultdict(list)
    loss_sum = torch.zeros((), device=task.device)
    count = 0
    frame_seconds = derived.playback_hop(cfg, 0) / dataset.sample_rate
    for batch in loader:
        outputs, losses, _ = task.step(batch, train=False)
        readable = batch["readable"]
        local["bad_files"].extend(batch["skipped"])
        loss_sum += losses["loss"] * batch["label"].shape[0]
        count += batch["label"].shape[0]
        local["index"].append(batch["index"][readable])
        local["view"].append(batch["view"][readable])
        local["scores"].append(outputs["logits"].cpu()[readable])
        local["labels"].append(batch["label"][readable])
        if collect_segments and "replay_masks" in outputs:
            segments = _segments(outputs, batch, dataset, frame_seconds)
            local["segments"].extend(s for s, ok in zip(segments, readable.repeat_interleave(
                outputs["replay_masks"].shape[1]).tolist()) if ok)
    merged = {key: (torch.cat(value) if key not in ("segments", "bad_files") else value)
              for key, value in local.items()}
    gathered = du.all_gather_objects(merged)
    totals = du.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(count), device=task.device)]))
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    if du.is_main_process():
        bad_files = sorted({msg for part in gathered for msg in part.get("bad_files", [])})
        ensemble = ViewEnsemble(len(dataset.records), dataset.num_views, sum(derived.class_counts(cfg)),
                                cfg.DATA.ENSEMBLE_METHOD)
        for part in gathered:
            if part:
                ensemble.add(part["index"], part["view"], part["scores"], part["labels"])
        result = ensemble.finalize()
        scored = result.received
        metrics = classification_metrics(result.scores[scored], result.labels[scored], derived.class_counts(cfg),
                                         cfg.DATA.MULTI_LABEL)
        # The loss of an unreadable item is that of silence; it stays in the average like every other view.
        metrics["loss"] = float(totals[0] / totals[1].clamp_min(1))
        metrics.update(_coverage(cfg, dataset, int(scored.sum()), bad_files, split))
        details = {"scores": result.scores[scored], "labels": result.labels[scored],
                   "per_view": result.per_view[scored],
                   "uids": [r.uid for r, ok in zip(dataset.records, scored.tolist()) if ok],
                   "segments": sorted((s for part in gathered for s in part.get("segments", [])),
                                      key=lambda s: (s["video"], s["view"], s["playback"]))}
    metrics = du.broadcast_object(metrics)
    return metrics, details


def _coverage(cfg: CfgNode, dataset: AudioClipDataset, scored: int, bad_files: list[str],
              split: str) -> dict[str, float]:
    """How many clips an evaluation's metrics cover; names the unreadable files in OUTPUT_DIR/bad_files.txt."""
    unreadable = len(dataset.records) - scored
    if bad_files:
        with open(Path(cfg.OUTPUT_DIR) / "bad_files.txt", "a") as handle:
            handle.writelines(msg + "\n" for msg in bad_files)
        logger.warning("%s: %d clip(s) could not be read and are left out of the metrics (see %s); first: %s",
                       split, unreadable, Path(cfg.OUTPUT_DIR) / "bad_files.txt", bad_files[0])
    missing = dataset.num_listed - len(dataset.records)
    if unreadable or missing:
        logger.warning("%s metrics cover %d of the %d listed clips (%d absent at start, %d unreadable)", split,
                       scored, dataset.num_listed, missing, unreadable)
    return {"clips": float(scored), "clips_unreadable": float(unreadable), "clips_missing": float(missing),
            "clips_listed": float(dataset.num_listed)}


def _segments(outputs: dict[str, Tensor], batch: dict[str, Any], dataset: AudioClipDataset,
              frame_seconds: float) -> list[dict[str, Any]]:
    """Replayed segments in seconds from the start of the audio file, one record per clip, view and playback."""
    spans = replayed_seconds(outputs["frame_times"], outputs["replay_masks"], frame_seconds,
                             [float(s) for s in batch["crop_start_s"]])
    records = []
    for item, per_replay in enumerate(spans):
        crop = [float(batch["crop_start_s"][item]), float(batch["crop_start_s"][item]) + dataset.clip_samples
                / dataset.sample_rate]
        for replay_index, runs in enumerate(per_replay):
            records.append({"video": dataset.records[int(batch["index"][item])].uid, "view": int(batch["view"][item]),
                            "playback": replay_index + 1, "crop": [round(t, 4) for t in crop],
                            "segments": [[round(s, 4), round(e, 4)] for s, e in runs]})
    return records


def validation_is_test(cfg: CfgNode) -> bool:
    """Whether the validation and test splits read the same annotation file(s) (VGG-Sound and AudioSet have no
    official validation split, and the shipped configs validate on the test list)."""
    val, test = derived.dataset_files(cfg, "val"), derived.dataset_files(cfg, "test")
    return val.dataset == test.dataset and {p.resolve() for p in val.annotation_files} == {
        p.resolve() for p in test.annotation_files}


def _test_checkpoint(cfg: CfgNode) -> Path | None:
    """TEST.CHECKPOINT_FILE_PATH, else the checkpoint of OUTPUT_DIR that TEST.CHECKPOINT_SELECT names (auto: the best,
    or the last when validation and test share their list), else TRAIN.CHECKPOINT_FILE_PATH."""
    if cfg.TEST.CHECKPOINT_FILE_PATH:
        return Path(cfg.TEST.CHECKPOINT_FILE_PATH)
    select, same = cfg.TEST.CHECKPOINT_SELECT, validation_is_test(cfg)
    lists = ", ".join(map(str, derived.dataset_files(cfg, "test").annotation_files))
    if select == "auto":
        select = "last" if same else "best"
        if same:
            logger.info("the validation and test lists are the same file (%s): testing the last checkpoint, since "
                        "checkpoint_best was chosen on this list (hold out a validation list with "
                        "tools/prepare_annotations.py --holdout-fraction, or TEST.CHECKPOINT_SELECT best)", lists)
    elif select == "best" and same:
        logger.warning("TEST.CHECKPOINT_SELECT best: checkpoint_best was chosen on the test list itself (%s), so its "
                       "test metrics are optimistic", lists)
    best = ckpt.best_checkpoint_path(cfg.OUTPUT_DIR)
    if select == "best" and best.is_file():
        return best
    epochs = ckpt.list_epoch_checkpoints(cfg.OUTPUT_DIR)
    if epochs:
        return epochs[-1][1]
    return Path(cfg.TRAIN.CHECKPOINT_FILE_PATH) if cfg.TRAIN.CHECKPOINT_FILE_PATH else None


def test(cfg: CfgNode) -> dict[str, float]:
    """Multi-view test of a checkpoint: metrics (metrics.jsonl "test_final"), scores under OUTPUT_DIR/scores/ and, with
    TEST.SAVE_SEGMENTS, the replayed segments in OUTPUT_DIR/scores/segments.jsonl."""
    prepare_output_dir(cfg)
    rank, world = du.get_rank(), du.get_world_size()
    seed_everything(cfg.RNG_SEED + rank)
    device = select_device(cfg)
    model = build_model(cfg)
    path = _test_checkpoint(cfg)
    if path is None:
        message = (f"no checkpoint to test (TEST.CHECKPOINT_FILE_PATH is empty and {cfg.OUTPUT_DIR}/checkpoints has "
                   "none)")
        if not cfg.MODEL.ALLOW_RANDOM_WEIGHTS:
            raise RandomWeightsError(f"{message}; set TEST.CHECKPOINT_FILE_PATH (or MODEL.ALLOW_RANDOM_WEIGHTS True to "
                                     "test random weights)")
        logger.warning("%s: testing randomly initialised weights (MODEL.ALLOW_RANDOM_WEIGHTS)", message)
    else:
        ckpt.load_weights(model, path, cfg.TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN, strict=not cfg.MODEL.ALLOW_RANDOM_WEIGHTS)
    model = wrap_model(cfg, model, device)
    task = build_task(cfg, model, device, train=False)
    test_set = build_dataset(cfg, "test", output_dir=Path(cfg.OUTPUT_DIR))
    loader = build_loader(cfg, test_set, "test", rank, world)
    logger.info("testing %s on %d clips x %d views", path, len(test_set.records), test_set.num_views)
    coverage: dict[str, int] = {}
    if du.is_main_process():
        write_clip_ids(cfg.OUTPUT_DIR, "test", test_set.records)
        coverage = audio_coverage(test_set.num_listed, len(test_set.records),
                                  str(derived.dataset_files(cfg, "test").annotation_files[0]))
    metrics, details = evaluate(cfg, task, loader, test_set, collect_segments=cfg.TEST.SAVE_SEGMENTS, split="test")
    writer = build_writer(cfg)
    writer.write({"split": "test_final", "checkpoint": str(path), **metrics, **coverage})
    writer.close()
    if du.is_main_process():
        _write_scores(cfg, details, test_set.records)
    return metrics


def _write_scores(cfg: CfgNode, details: dict[str, Any], records: list[ClipRecord]) -> None:
    """OUTPUT_DIR/scores/<split>.npz (scores, per-view scores, labels, clip ids; numpy, no pickle), per_class.csv (AP
    of every class) and segments.jsonl."""
    scores_dir = Path(cfg.OUTPUT_DIR) / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    name = cfg.EPICKITCHENS.TEST_SPLIT if derived.split_dataset(cfg, "test") == "epickitchens" else "test"
    np.savez(scores_dir / f"{name}.npz", scores=details["scores"].numpy(), per_view=details["per_view"].numpy(),
             labels=details["labels"].numpy(), uids=np.array(details["uids"]))
    if cfg.TEST.SAVE_RESULTS_PATH:
        np.savez(Path(cfg.OUTPUT_DIR) / cfg.TEST.SAVE_RESULTS_PATH, scores=details["scores"].numpy(),
                 labels=details["labels"].numpy())
    counts = derived.class_counts(cfg)
    write_per_class_csv(scores_dir / PER_CLASS_FILE, details["scores"], details["labels"], counts,
                        cfg.DATA.MULTI_LABEL, task_class_names(records, counts, cfg.MODEL.MULTITASK),
                        ("verb", "noun") if cfg.MODEL.MULTITASK else ())
    if cfg.TEST.SAVE_SEGMENTS:
        with open(scores_dir / "segments.jsonl", "w") as handle:
            for record in details["segments"]:
                handle.write(json.dumps(record) + "\n")
    logger.info("scores written to %s", scores_dir)


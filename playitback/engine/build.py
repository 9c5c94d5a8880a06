"""From the config to the objects a run is made of: device, task, optimiser, LR schedule, loop settings, checkpointer,
metric writer. With playitback.engine.trainer (the entry points that assemble a run) the only engine code that
reads the config; the loop, the checkpointer and the evaluation take what is built here.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from playitback.config import derived, dump_config
from playitback.data.augment import MixUp
from playitback.data.build import build_label_space, build_pyramid, frontend_on_device
from playitback.data.labels import LabelSpace
from playitback.engine.checkpointer import Checkpointer
from playitback.engine.loop import LoopSettings
from playitback.engine.optim import LRSchedule, build_optimizer, layer_decay_scales, param_groups
from playitback.engine.task import ClassificationTask, SpecAugmentSettings
from playitback.losses import PlayItBackLoss
from playitback.models.build import saliency_class
from playitback.utils import distributed as du
from playitback.utils.logging import MetricWriter


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


def build_loss(cfg: CfgNode, label_space: LabelSpace) -> PlayItBackLoss:
    """The loss of MODEL.* and SALIENCY.* weights over the label space, with the objective the SALIENCY.METHOD class
    declares."""
    saliency = saliency_class(cfg)
    return PlayItBackLoss(label_space, aux_weight=cfg.MODEL.AUX_LOSS_WEIGHT, rank_weight=cfg.MODEL.RANK_LOSS_WEIGHT,
                          rank_margin=cfg.MODEL.RANK_MARGIN, area_weight=cfg.SALIENCY.AREA_WEIGHT,
                          contiguity_weight=cfg.SALIENCY.CONTIGUITY_WEIGHT, budget=cfg.SALIENCY.BUDGET,
                          saliency_objective=saliency.objective, saliency_fields=saliency.objective_fields)


def build_task(cfg: CfgNode, model: nn.Module, device: torch.device, train: bool,
               label_space: LabelSpace | None = None) -> ClassificationTask:
    """The task of a config: loss, on-device front-end, SpecAugment and MixUp (training only), autocast; over
    `label_space` (default: the config's, with classes named by their ids)."""
    label_space = label_space or build_label_space(cfg)
    augment, mixup = cfg.SPEC_AUGMENT, cfg.MIXUP
    counts = list(label_space.class_counts)
    return ClassificationTask(
        model,
        build_loss(cfg, label_space),
        label_space=label_space,
        device=device,
        pyramid=build_pyramid(cfg).to(device) if frontend_on_device(cfg) else None,
        spec_augment_settings=SpecAugmentSettings(augment.TIME_WARP, augment.FREQ_MASK, augment.NUM_FREQ_MASKS,
                                                  augment.TIME_MASK, augment.NUM_TIME_MASKS)
        if train and augment.ENABLE else None,
        mixup=MixUp(counts, multi_label=label_space.multi_label, mixup_alpha=mixup.ALPHA,
                    cutmix_alpha=mixup.CUTMIX_ALPHA, prob=mixup.PROB, switch_prob=mixup.SWITCH_PROB,
                    label_smoothing=mixup.LABEL_SMOOTH_VALUE)
        if train and mixup.ENABLE else None,
        amp_dtype=amp_dtype(cfg, device) if train else None,
        eval_amp_dtype=amp_dtype(cfg, device, train=False),
        replay_events=cfg.MODEL.REPLAY == "events",
        generator=torch.Generator().manual_seed(cfg.RNG_SEED * 1000 + du.get_rank()),
        frame_seconds=derived.playback_hop(cfg, 0) / cfg.AUDIO_DATA.SAMPLING_RATE,
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


def build_lr_schedule(cfg: CfgNode) -> LRSchedule:
    """SOLVER.LR_POLICY and its keys, at the peak LR of the global batch (derived.base_lr)."""
    solver = cfg.SOLVER
    return LRSchedule(solver.LR_POLICY, derived.base_lr(cfg), solver.MAX_EPOCH, solver.WARMUP_EPOCHS,
                      solver.WARMUP_START_LR, solver.COSINE_END_LR, solver.COSINE_AFTER_WARMUP,
                      tuple(solver.STEPS), tuple(solver.LRS))


def build_loop_settings(cfg: CfgNode) -> LoopSettings:
    """How the loop steps: SOLVER.MAX_EPOCH, LOG_PERIOD, TRAIN.ACCUMULATION_STEPS, TRAIN.ON_NONFINITE_LOSS and the
    SOLVER.CLIP_GRAD_* thresholds."""
    return LoopSettings(max_epoch=cfg.SOLVER.MAX_EPOCH, log_period=cfg.LOG_PERIOD,
                        accumulation_steps=cfg.TRAIN.ACCUMULATION_STEPS,
                        on_nonfinite_loss=cfg.TRAIN.ON_NONFINITE_LOSS, clip_grad_val=cfg.SOLVER.CLIP_GRAD_VAL,
                        clip_grad_l2norm=cfg.SOLVER.CLIP_GRAD_L2NORM)


def build_checkpointer(cfg: CfgNode) -> Checkpointer:
    """Where and how a run saves and resumes: OUTPUT_DIR, TRAIN.AUTO_RESUME, TRAIN.CHECKPOINT_FILE_PATH and its
    options."""
    return Checkpointer(Path(cfg.OUTPUT_DIR), dump_config(cfg), auto_resume=cfg.TRAIN.AUTO_RESUME,
                        start_from=cfg.TRAIN.CHECKPOINT_FILE_PATH,
                        clear_name_patterns=tuple(cfg.TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN),
                        epoch_reset=cfg.TRAIN.CHECKPOINT_EPOCH_RESET)


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


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Parameter counts in millions: total and trainable, per top-level module."""
    counts = {"params_M": sum(p.numel() for p in model.parameters()) / 1e6,
              "trainable_params_M": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6}
    for name, child in model.named_children():
        counts[f"{name}_params_M"] = sum(p.numel() for p in child.parameters()) / 1e6
    return counts

"""The entry points of a run, `train(cfg)` and `test(cfg)` (what tools/run_net.py launches in every process): they
build the parts (playitback.engine.build) and drive them, and hold no model- or dataset-specific branch.

The epoch policy (periods, resumption, the checks after every epoch) is playitback.engine.epochs, the steps of an
epoch playitback.engine.loop. SIGTERM/SIGUSR1 save a checkpoint after the step under way and stop (SLURM preemption);
the same command resumes exactly.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from fvcore.common.config import CfgNode
from torch import nn

from playitback.anytime import anytime_point, exit_confidence, playback_costs
from playitback.config import derived, dump_config
from playitback.data.build import build_dataset, build_label_space, build_loader
from playitback.data.dataset import AudioClipDataset
from playitback.data.labels import LabelSpace
from playitback.engine import checkpoint_files as ckpt
from playitback.engine.build import (
    build_checkpointer,
    build_loop_settings,
    build_lr_schedule,
    build_task,
    build_training_optimizer,
    build_writer,
    count_parameters,
    seed_everything,
    select_device,
    wrap_model,
)
from playitback.engine.checkpointer import Checkpointer, select_test_checkpoint
from playitback.engine.epochs import BadFileCheck, EpochPeriods, run_epochs
from playitback.engine.evaluate import Evaluation, evaluate, write_scores
from playitback.engine.learning_check import NotLearningCheck, chance_loss
from playitback.engine.loop import StopRequest, TrainState, first_batches, train_one_epoch
from playitback.engine.reproducibility import audio_coverage, write_clip_ids
from playitback.engine.task import ClassificationTask
from playitback.models import build_model
from playitback.models.build import example_playbacks
from playitback.models.cost import stage_flops
from playitback.utils import distributed as du
from playitback.utils.errors import UserError
from playitback.utils.logging import MetricWriter, setup_logging

logger = logging.getLogger(__name__)


class RandomWeightsError(UserError, RuntimeError):
    """Weights that no checkpoint provided would be trained on frozen or tested (see MODEL.ALLOW_RANDOM_WEIGHTS)."""


def prepare_output_dir(cfg: CfgNode) -> None:
    """Create OUTPUT_DIR/checkpoints, start logging there and save the config."""
    if du.is_main_process():
        (Path(cfg.OUTPUT_DIR) / "checkpoints").mkdir(parents=True, exist_ok=True)
        (Path(cfg.OUTPUT_DIR) / "config.yaml").write_text(dump_config(cfg))
    du.barrier()
    setup_logging(cfg.OUTPUT_DIR)



def _require_encoder_weights(cfg: CfgNode, model: nn.Module, unfilled: Sequence[str]) -> None:
    """A frozen encoder must come from a checkpoint: PlayItBack would otherwise train on random features."""
    if derived.is_encoder_only(cfg) or not cfg.MODEL.FREEZE_ENCODER:
        return
    encoder_keys = [key for key in du.unwrap_model(model).state_dict() if key.startswith("encoder.")]
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



def _log_batch_and_lr(cfg: CfgNode, world: int) -> None:
    """One line: the global batch, how it is split, and the peak LR it gets (SOLVER.BASE_LR_BATCH_SIZE)."""
    solver = cfg.SOLVER
    rule = (f"BASE_LR {solver.BASE_LR} x {solver.BASE_LR_SCALE_RULE}({cfg.TRAIN.BATCH_SIZE} / "
            f"{solver.BASE_LR_BATCH_SIZE})" if solver.BASE_LR_BATCH_SIZE else "SOLVER.BASE_LR")
    steps = cfg.TRAIN.ACCUMULATION_STEPS
    accumulated = f" x {steps} accumulated loader batches" if steps > 1 else ""
    logger.info("global batch %d = %d per process x %d process(es)%s; peak learning rate %.6g (%s)",
                cfg.TRAIN.BATCH_SIZE, derived.per_process_batch(cfg.TRAIN.BATCH_SIZE, world * steps), world,
                accumulated, derived.base_lr(cfg), rule)



def validation_is_test(cfg: CfgNode) -> bool:
    """Whether the validation and test splits read the same annotation file(s) (VGG-Sound and AudioSet have no
    official validation split, and the shipped configs validate on the test list)."""
    val, test = derived.dataset_files(cfg, "val"), derived.dataset_files(cfg, "test")
    return val.dataset == test.dataset and {p.resolve() for p in val.annotation_files} == {
        p.resolve() for p in test.annotation_files}




def validate_epoch(task: ClassificationTask, loader: Iterable[dict[str, Any]], dataset: AudioClipDataset,
                   label_space: LabelSpace, checkpointer: Checkpointer, state: TrainState, writer: MetricWriter,
                   ensemble_method: str) -> dict[str, Any]:
    """Validate the epoch just trained, whose checkpoint is already written: record the metrics and, when they are the
    best so far, copy that checkpoint to checkpoint_best.pyth."""
    metrics = evaluate(task, loader, dataset, label_space, checkpointer.output_dir, ensemble_method=ensemble_method,
                       split="val").metrics
    score = label_space.primary_metric(metrics)
    is_best = score > state.best_metric
    state.best_metric = max(state.best_metric, score)
    state.pending_validation = False
    writer.write({"split": "val_epoch", "epoch": state.epoch + 1, **metrics, "best": state.best_metric},
                 step=state.global_step)
    if is_best:
        best = checkpointer.mark_best(state.epoch + 1)
        logger.info("epoch %d is the best so far (%.4f): copied its checkpoint to %s", state.epoch + 1, score, best)
    du.barrier()
    return metrics


def train_and_test(cfg: CfgNode) -> dict[str, Any] | None:
    """The stages the config enables, in the processes and the process group of one job: TRAIN.ENABLE, then
    TEST.ENABLE unless a signal stopped the training (the same command then resumes, and tests after).

    Returns:
        training's result when a signal stopped it ({"stopped": True, ...}), else the test metrics, else training's.
    """
    result = None
    if cfg.TRAIN.ENABLE:
        with du.stage("train"):
            result = train(cfg)
        if result.get("stopped"):
            return result
    if cfg.TEST.ENABLE:
        with du.stage("test"):
            result = test(cfg)
    return result


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
    label_space = build_label_space(cfg, train_set.records)
    model = build_model(cfg)
    if cfg.LOG_MODEL_INFO:
        logger.info("model %s: %s", cfg.MODEL.MODEL_NAME, json.dumps(count_parameters(model)))
    model = wrap_model(cfg, model, device)
    optimizer = build_training_optimizer(cfg, du.unwrap_model(model))
    task = build_task(cfg, model, device, train=True, label_space=label_space)
    scaler = torch.amp.GradScaler(device.type, enabled=task.amp_dtype == torch.float16)
    checkpointer = build_checkpointer(cfg)
    state, unfilled = checkpointer.resume(model, optimizer, scaler, task.generator)
    _require_encoder_weights(cfg, model, unfilled)
    schedule, settings = build_lr_schedule(cfg), build_loop_settings(cfg)

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
    learning = NotLearningCheck(chance_loss([r.labels for r in train_set.records], label_space),
                                cfg.TRAIN.NOT_LEARNING_EPOCHS, cfg.TRAIN.NOT_LEARNING_MARGIN)
    bad_files = BadFileCheck(Path(cfg.OUTPUT_DIR), cfg.DATA_LOADER.MAX_BAD_FRACTION,
                             iters_per_epoch * cfg.TRAIN.BATCH_SIZE // cfg.TRAIN.ACCUMULATION_STEPS)
    periods = EpochPeriods(cfg.SOLVER.MAX_EPOCH, cfg.TRAIN.EVAL_PERIOD, cfg.TRAIN.CHECKPOINT_PERIOD)
    stop = StopRequest()

    def train_epoch(bad_file_messages: list[str]) -> dict[str, float]:
        train_set.set_epoch(state.epoch)
        sampler.set_epoch(state.epoch)
        sampler.set_start_batch(state.iteration)
        return train_one_epoch(task, first_batches(train_loader, iters_per_epoch - state.iteration), optimizer,
                               scaler, schedule, state, iters_per_epoch, settings, writer, stop, bad_file_messages)

    def save() -> None:
        checkpointer.save(model, optimizer, scaler, task.generator, state)

    def validate() -> dict[str, Any]:
        return validate_epoch(task, val_loader, val_set, label_space, checkpointer, state, writer, cfg.DATA.ENSEMBLE_METHOD)

    stop.install()
    try:
        result = run_epochs(state, periods, iters_per_epoch, train_epoch, bad_files, learning, writer, save, validate)
    finally:
        stop.restore()
        writer.close()
    if result.get("stopped"):
        logger.info("stopped by %s; resume with the same command", stop.signal_name or "a signal")
    return result


def checkpoint_to_test(cfg: CfgNode) -> Path | None:
    """The checkpoint `test` reads (TEST.CHECKPOINT_FILE_PATH, TEST.CHECKPOINT_SELECT, TRAIN.CHECKPOINT_FILE_PATH)."""
    return select_test_checkpoint(cfg.OUTPUT_DIR, cfg.TEST.CHECKPOINT_FILE_PATH, cfg.TEST.CHECKPOINT_SELECT,
                                  validation_is_test(cfg), cfg.TRAIN.CHECKPOINT_FILE_PATH,
                                  ", ".join(map(str, derived.dataset_files(cfg, "test").annotation_files)))


def _anytime_metrics(cfg: CfgNode, model: nn.Module, evaluation: Evaluation, label_space: LabelSpace
                     ) -> dict[str, float]:
    """The test's metrics under anytime inference (TEST.EXIT_POLICY at TEST.EXIT_THRESHOLD), prefixed "anytime_", with
    the mean multiply-adds per clip (GMACs), their fraction of the full forward's and the share of clips stopping
    after each playback."""
    with torch.no_grad():
        flops, _ = stage_flops(model, example_playbacks(cfg, 1, next(model.parameters()).device))
    costs = playback_costs(flops, model.num_playbacks)
    playback_logits = evaluation.playback_scores.transpose(0, 1)  # [S, N, K]
    confidence = exit_confidence(playback_logits, label_space.class_counts, label_space.multi_label,
                                 cfg.TEST.EXIT_POLICY)
    point = anytime_point(playback_logits, evaluation.scores, evaluation.labels, label_space, confidence, costs,
                          cfg.TEST.EXIT_THRESHOLD)
    return {**{f"anytime_{name}": value for name, value in point.metrics.items()},
            "anytime_gmacs": point.mean_cost / 1e9, "anytime_cost_fraction": point.cost_fraction,
            "full_gmacs": costs[-1] / 1e9,
            **{f"anytime_exit_p{p}": share * 100 for p, share in enumerate(point.exit_fractions)}}


def test(cfg: CfgNode) -> dict[str, float]:
    """Multi-view test of a checkpoint: metrics (metrics.jsonl "test_final"), scores under OUTPUT_DIR/scores/ and, with
    TEST.SAVE_SEGMENTS, the replayed segments in OUTPUT_DIR/scores/segments.jsonl."""
    prepare_output_dir(cfg)
    rank, world = du.get_rank(), du.get_world_size()
    seed_everything(cfg.RNG_SEED + rank)
    device = select_device(cfg)
    model = build_model(cfg)
    path = checkpoint_to_test(cfg)
    if path is None:
        message = (f"no checkpoint to test (TEST.CHECKPOINT_FILE_PATH is empty and {cfg.OUTPUT_DIR}/checkpoints has "
                   "none)")
        if not cfg.MODEL.ALLOW_RANDOM_WEIGHTS:
            raise RandomWeightsError(f"{message}; set TEST.CHECKPOINT_FILE_PATH (or MODEL.ALLOW_RANDOM_WEIGHTS True to "
                                     "test random weights)")
        logger.warning("%s: testing randomly initialised weights (MODEL.ALLOW_RANDOM_WEIGHTS)", message)
    else:
        named_by = ("TEST.CHECKPOINT_FILE_PATH" if cfg.TEST.CHECKPOINT_FILE_PATH == str(path) else
                    "TRAIN.CHECKPOINT_FILE_PATH" if cfg.TRAIN.CHECKPOINT_FILE_PATH == str(path) else "")
        ckpt.load_weights(model, path, cfg.TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN,
                          strict=not cfg.MODEL.ALLOW_RANDOM_WEIGHTS, key=named_by)
    model = wrap_model(cfg, model, device)
    test_set = build_dataset(cfg, "test", output_dir=Path(cfg.OUTPUT_DIR))
    label_space = build_label_space(cfg, test_set.records)
    task = build_task(cfg, model, device, train=False, label_space=label_space)
    loader = build_loader(cfg, test_set, "test", rank, world)
    logger.info("testing %s on %d clips x %d views", path, len(test_set.records), test_set.num_views)
    coverage: dict[str, int] = {}
    if du.is_main_process():
        write_clip_ids(cfg.OUTPUT_DIR, "test", test_set.records)
        coverage = audio_coverage(test_set.num_listed, len(test_set.records),
                                  str(derived.dataset_files(cfg, "test").annotation_files[0]))
    evaluation = evaluate(task, loader, test_set, label_space, cfg.OUTPUT_DIR, ensemble_method=cfg.DATA.ENSEMBLE_METHOD,
                          collect_segments=cfg.TEST.SAVE_SEGMENTS, split="test")
    if cfg.TEST.EXIT_POLICY != "none" and du.is_main_process():
        evaluation.metrics.update(_anytime_metrics(cfg, du.unwrap_model(model), evaluation, label_space))
    writer = build_writer(cfg)
    writer.write({"split": "test_final", "checkpoint": str(path), **evaluation.metrics, **coverage})
    writer.close()
    if du.is_main_process():
        write_scores(Path(cfg.OUTPUT_DIR) / "scores", evaluation, label_space, derived.dataset_files(cfg, "test").scores_name,
                     Path(cfg.OUTPUT_DIR) / cfg.TEST.SAVE_RESULTS_PATH if cfg.TEST.SAVE_RESULTS_PATH else None,
                     write_segments=cfg.TEST.SAVE_SEGMENTS)
    return evaluation.metrics

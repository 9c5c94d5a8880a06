"""Checkpoint policy of a run: what a training checkpoint holds, how a run resumes or starts from weights, which
checkpoint a test reads. File handling (atomic writes, safe loading, epoch listing) is playitback.engine.checkpoint_files.

A training checkpoint holds everything an exact resumption needs: model, optimiser, scaler, the random states of
every process (the augmentation generator included) and the position inside the epoch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from playitback.config.choices import CHECKPOINT_SELECTIONS
from playitback.engine import checkpoint_files as ckpt
from playitback.engine.loop import TrainState
from playitback.models.weights import from_original_key
from playitback.utils import distributed as du

logger = logging.getLogger(__name__)



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


@dataclass(frozen=True)
class Checkpointer:
    """Saves and resumes the training checkpoints of one run.

    Attributes:
        output_dir: the run's OUTPUT_DIR (checkpoints under output_dir/checkpoints).
        config_yaml: the run's config, stored in every checkpoint.
        auto_resume: continue from the newest valid checkpoint of output_dir when there is one.
        start_from: otherwise start from this checkpoint ("" for none): its weights, and for this project's training
            checkpoint of the same model its optimiser, scaler, schedule and epoch.
        clear_name_patterns: substrings removed from start_from's keys before they are matched.
        epoch_reset: take only start_from's weights, and start at epoch 0.
    """

    output_dir: Path
    config_yaml: str
    auto_resume: bool = True
    start_from: str = ""
    clear_name_patterns: tuple[str, ...] = ()
    epoch_reset: bool = False

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             generator: torch.Generator, state: TrainState) -> Path:
        """Write checkpoints/checkpoint_epoch_{epoch+1:05d}.pyth atomically on the main process, with the random
        states of every process (a collective: every process calls it); returns its path."""
        random_states = du.all_gather_objects({"rng_state": ckpt.rng_state(),
                                               "augment_generator_state": generator.get_state()})
        path = ckpt.checkpoint_path(self.output_dir, state.epoch + 1)
        if du.is_main_process():
            ckpt.save_checkpoint(path, {
                "epoch": state.epoch,
                "iteration_in_epoch": state.iteration,
                "global_step": state.global_step,
                "best_metric": state.best_metric,
                "pending_validation": state.pending_validation,
                "model_state": du.unwrap_model(model).state_dict(),
                "optimizer_state": optimizer.state_dict(),
                "scaler_state": scaler.state_dict(),
                "cfg": self.config_yaml,
                # One entry per process (index = rank): every process resumes its own random streams.
                "rng_states": random_states,
            })
            logger.info("saved %s (epoch %d, iteration %d)", path, state.epoch + 1, state.iteration)
        du.barrier()
        return path

    def mark_best(self, epoch: int) -> Path:
        """Copy the checkpoint of `epoch` (1-based) to checkpoints/checkpoint_best.pyth (main process)."""
        best = ckpt.best_checkpoint_path(self.output_dir)
        if du.is_main_process():
            ckpt.copy_checkpoint(ckpt.checkpoint_path(self.output_dir, epoch), best)
        return best

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               generator: torch.Generator) -> tuple[TrainState, list[str]]:
        """Auto-resume from the newest valid checkpoint of output_dir, else start from `start_from`, else from
        scratch. Returns the state to continue from and the model keys no checkpoint filled."""
        found = ckpt.latest_valid_checkpoint(self.output_dir) if self.auto_resume else None
        if found is not None:
            return self._continue_run(model, optimizer, scaler, generator, *found), []
        if self.start_from:
            return self._start_from(model, optimizer, scaler)
        return TrainState(), list(du.unwrap_model(model).state_dict())

    def _continue_run(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      generator: torch.Generator, path: Path, checkpoint: dict[str, Any]) -> TrainState:
        """Continue a run exactly from its own checkpoint: modules, optimiser, scaler, random streams, position."""
        # A run started before the saliency modules were named holds their original keys (saliency_slots.{i}.0/.3).
        du.unwrap_model(model).load_state_dict({from_original_key(k): v for k, v in checkpoint["model_state"].items()})
        _restore_optimizer(optimizer, checkpoint["optimizer_state"], path)
        _restore_scaler(scaler, checkpoint["scaler_state"], path)
        states = checkpoint["rng_states"]
        if len(states) != du.get_world_size():
            logger.warning("checkpoint holds random states of %d process(es), this job has %d: the resumed run is "
                           "valid but not bit-identical to an uninterrupted one", len(states), du.get_world_size())
        mine = states[du.get_rank() % len(states)]
        ckpt.set_rng_state(mine["rng_state"])
        generator.set_state(mine["augment_generator_state"])
        state = TrainState(checkpoint["epoch"], checkpoint["iteration_in_epoch"], checkpoint["global_step"],
                           checkpoint["best_metric"], checkpoint.get("pending_validation", False))
        logger.info("resumed from %s: epoch %d, iteration %d", path, state.epoch + 1, state.iteration)
        return state

    def _start_from(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler) -> tuple[TrainState, list[str]]:
        """Start from `start_from`: its weights, and (for this project's own training checkpoint of this model,
        unless epoch_reset) its optimiser, scaler, schedule and epoch.

        Anything else (an original PlayItBack checkpoint, whose optimiser holds every parameter and whose epoch is
        its last; an encoder or MViTv2 checkpoint) gives weights only.
        """
        path = self.start_from
        checkpoint, report = ckpt.load_weights(du.unwrap_model(model), path, self.clear_name_patterns,
                                               key="TRAIN.CHECKPOINT_FILE_PATH")
        if not ckpt.is_training_checkpoint(checkpoint):
            logger.info("%s is not a playitback training checkpoint: loaded its weights only; the optimiser, "
                        "GradScaler, schedule and epoch start fresh", path)
            return TrainState(), report.missing
        if report.missing or report.remapped or self.epoch_reset:
            why = "TRAIN.CHECKPOINT_EPOCH_RESET" if self.epoch_reset else "it is another model's"
            logger.info("%s: loaded its weights only (%s); the optimiser, GradScaler, schedule and epoch start fresh",
                        path, why)
            return TrainState(), report.missing
        _restore_optimizer(optimizer, checkpoint["optimizer_state"], path)
        _restore_scaler(scaler, checkpoint["scaler_state"], path)
        state = TrainState(epoch=int(checkpoint["epoch"]) + 1)
        logger.info("%s: continuing its schedule at epoch %d", path, state.epoch + 1)
        return state, []


def select_test_checkpoint(output_dir: str | Path, explicit: str, select: str, validated_on_test: bool,
                           fallback: str, test_lists: str) -> Path | None:
    """The checkpoint a test reads: `explicit` (TEST.CHECKPOINT_FILE_PATH), else the checkpoint of output_dir that
    `select` names (auto: the best, or the last when validation and test share their list), else `fallback`
    (TRAIN.CHECKPOINT_FILE_PATH), else None.

    Args:
        validated_on_test: whether the validation split read the test list (so checkpoint_best was chosen on it).
        test_lists: the test list(s), for the log.
    """
    if select not in CHECKPOINT_SELECTIONS:
        raise ValueError(f"TEST.CHECKPOINT_SELECT must be one of {CHECKPOINT_SELECTIONS}, got {select!r}")
    if explicit:
        return Path(explicit)
    if select == "auto":
        select = "last" if validated_on_test else "best"
        if validated_on_test:
            logger.info("the validation and test lists are the same file (%s): testing the last checkpoint, since "
                        "checkpoint_best was chosen on this list (hold out a validation list with "
                        "tools/prepare_annotations.py --holdout-fraction, or TEST.CHECKPOINT_SELECT best)", test_lists)
    elif select == "best" and validated_on_test:
        logger.warning("TEST.CHECKPOINT_SELECT best: checkpoint_best was chosen on the test list itself (%s), so its "
                       "test metrics are optimistic", test_lists)
    best = ckpt.best_checkpoint_path(output_dir)
    if select == "best" and best.is_file():
        return best
    epochs = ckpt.list_epoch_checkpoints(output_dir)
    if epochs:
        return epochs[-1][1]
    return Path(fallback) if fallback else None

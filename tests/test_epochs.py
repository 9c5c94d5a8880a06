"""The epoch policy of playitback.engine.epochs without a model: the order of training, saving and validating for given
periods, resumption of a pending validation, a stop signal mid-epoch, and the checks after every epoch. The expected
call sequences are written out by hand."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from playitback.engine.epochs import BadFileCheck, EpochPeriods, TooManyBadFilesError, run_epochs
from playitback.engine.learning_check import NotLearningCheck
from playitback.engine.loop import TrainState
from playitback.utils.logging import MetricWriter

ITERS = 4


class FakeRun:
    """Records what run_epochs asks for; trains an epoch by moving state.iteration to its end (or stops it at
    ``stop_at`` = (epoch, iteration)) with a constant loss."""

    def __init__(self, state: TrainState, loss: float = 1.0, stop_at: tuple[int, int] | None = None,
                 bad: tuple[list[str], int] = ([], 0)) -> None:
        self.state, self.loss, self.stop_at, self.bad = state, loss, stop_at, bad
        self.calls: list[str] = []

    def train_epoch(self, messages: list[str]) -> dict[str, float]:
        self.calls.append(f"train{self.state.epoch + 1}@{self.state.iteration}")
        end = ITERS
        if self.stop_at and self.stop_at[0] == self.state.epoch + 1:
            end = self.stop_at[1]
        self.state.global_step += end - self.state.iteration
        self.state.iteration = end
        messages.extend(self.bad[0])
        return {"loss_fused": self.loss, "replaced_items": float(self.bad[1])}

    def save(self) -> None:
        self.calls.append(f"save{self.state.epoch + 1}" + ("v" if self.state.pending_validation else ""))

    def validate(self) -> dict[str, Any]:
        self.calls.append(f"val{self.state.epoch + 1}")
        self.state.pending_validation = False
        return {"top1_acc": float(self.state.epoch + 1)}


def _run(tmp_path: Path, run: FakeRun, periods: EpochPeriods, learning: NotLearningCheck | None = None,
         max_fraction: float = 0.5) -> dict[str, Any]:
    writer = MetricWriter(tmp_path)
    try:
        return run_epochs(run.state, periods, ITERS, run.train_epoch, BadFileCheck(tmp_path, max_fraction, 8),
                          learning or NotLearningCheck(chance=2.0, after_epochs=0), writer, run.save, run.validate)
    finally:
        writer.close()


def _records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_periods_order_saving_before_validating(tmp_path: Path) -> None:
    run = FakeRun(TrainState())
    result = _run(tmp_path, run, EpochPeriods(max_epoch=5, eval_period=2, checkpoint_period=3))
    assert run.calls == ["train1@0", "train2@0", "save2v", "val2", "train3@0", "save3", "train4@0", "save4v", "val4",
                         "train5@0", "save5v", "val5"]
    assert result == {"top1_acc": 5.0}
    assert [r["epoch"] for r in _records(tmp_path) if r["split"] == "train_epoch"] == [1, 2, 3, 4, 5]


def test_resume_runs_the_pending_validation_then_goes_on(tmp_path: Path) -> None:
    # A checkpoint of epoch 2's end whose validation did not finish.
    state = TrainState(epoch=1, iteration=ITERS, global_step=2 * ITERS, pending_validation=True)
    run = FakeRun(state)
    _run(tmp_path, run, EpochPeriods(max_epoch=3, eval_period=1, checkpoint_period=1))
    assert run.calls == ["val2", "train3@0", "save3v", "val3"]


def test_resume_mid_epoch_continues_from_its_batch(tmp_path: Path) -> None:
    run = FakeRun(TrainState(epoch=1, iteration=3, global_step=ITERS + 3))
    _run(tmp_path, run, EpochPeriods(max_epoch=2, eval_period=1, checkpoint_period=1))
    assert run.calls == ["train2@3", "save2v", "val2"]
    assert run.state.global_step == 2 * ITERS


def test_a_stop_signal_saves_and_stops_without_validating(tmp_path: Path) -> None:
    run = FakeRun(TrainState(), stop_at=(2, 1))
    result = _run(tmp_path, run, EpochPeriods(max_epoch=4, eval_period=1, checkpoint_period=1))
    assert run.calls == ["train1@0", "save1v", "val1", "train2@0", "save2"]
    assert result == {"stopped": True, "epoch": 1, "iteration": 1}
    # The stopped epoch leaves no train_epoch record: it is not finished.
    assert [r["epoch"] for r in _records(tmp_path) if r["split"] == "train_epoch"] == [1]


def test_not_learning_warns_once_at_its_epoch(tmp_path: Path) -> None:
    run = FakeRun(TrainState(), loss=1.99)
    _run(tmp_path, run, EpochPeriods(max_epoch=4, eval_period=4, checkpoint_period=4),
         learning=NotLearningCheck(chance=2.0, after_epochs=2, margin=0.05))
    warnings = [r for r in _records(tmp_path) if r["split"] == "warning"]
    assert [(w["kind"], w["epoch"], w["chance_loss"]) for w in warnings] == [("not_learning", 2, 2.0)]


def test_bad_files_are_listed_and_too_many_stop_the_run(tmp_path: Path) -> None:
    run = FakeRun(TrainState(), bad=(["a.wav: unreadable", "b.wav: short"], 2))
    _run(tmp_path, run, EpochPeriods(max_epoch=2, eval_period=2, checkpoint_period=2))
    assert (tmp_path / "bad_files.txt").read_text().splitlines() == ["a.wav: unreadable", "b.wav: short"] * 2
    run = FakeRun(TrainState(), bad=(["c.wav: unreadable"], 5))
    with pytest.raises(TooManyBadFilesError, match=r"5 of 8 items .*DATA_LOADER.MAX_BAD_FRACTION \(0.5\)"):
        (tmp_path / "stop").mkdir()
        _run(tmp_path / "stop", run, EpochPeriods(max_epoch=2, eval_period=1, checkpoint_period=1))
    # It stops before the epoch is saved or validated.
    assert run.calls == ["train1@0"]

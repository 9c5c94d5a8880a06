"""The training loop in-process, over a fake task (detectron2's way of testing an engine): the order of its effects,
gradient accumulation against one step on the global batch, the non-finite policy and the stop flag. No config, no
dataset: the loop takes built objects, and these tests build small ones by hand."""
from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from playitback.config import ConfigError, load_config
from playitback.engine.loop import LoopSettings, NonFiniteLossError, StopRequest, TrainState, train_one_epoch
from playitback.engine.optim import LRSchedule


def _batches(count: int, size: int, seed: int = 0) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(size, 3, generator=generator), "y": torch.randn(size, 1, generator=generator),
             "index": torch.arange(size) + i * size, "skipped": [], "replaced": 0} for i in range(count)]


class FakeTask:
    """A linear regression with a mean squared error: what the loop needs of a task (`model`, `step`)."""

    def __init__(self, events: list[str] | None = None, nan_at: set[int] = frozenset(),
                 stop_at: tuple[int, StopRequest] | None = None) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(3, 1)
        self.events = events if events is not None else []
        self.nan_at, self.stop_at = nan_at, stop_at
        self.calls = 0
        self.model.weight.register_hook(lambda grad: self.events.append("backward"))

    def step(self, batch: dict[str, Any], train: bool) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        self.events.append("forward")
        if self.stop_at is not None and self.calls == self.stop_at[0]:
            self.stop_at[1].requested = True
        loss = (self.model(batch["x"]) - batch["y"]).pow(2).mean()
        if self.calls in self.nan_at:
            loss = loss * math.nan
        self.calls += 1
        return loss, {"loss": loss, "loss_fused": loss}, batch["y"]


class RecordingSGD(torch.optim.SGD):
    def __init__(self, params: Any, events: list[str]) -> None:
        super().__init__(params, lr=0.1)
        self.events = events

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.events.append("zero_grad")
        super().zero_grad(set_to_none)

    def step(self, closure: Any = None) -> Any:
        self.events.append("optimizer_step")
        return super().step(closure)


class RecordingScaler(torch.amp.GradScaler):
    """A disabled scaler (float32) that records its calls."""

    def __init__(self, events: list[str]) -> None:
        super().__init__("cpu", enabled=False)
        self.events = events

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        self.events.append("unscale")
        super().unscale_(optimizer)

    def update(self, new_scale: Any = None) -> None:
        self.events.append("scaler_update")
        super().update(new_scale)


class Records:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, stats: dict[str, Any], step: int | None = None) -> None:
        self.rows.append(stats)


def _train(task: FakeTask, batches: list[dict[str, Any]], accumulation: int = 1, policy: str = "raise",
           stop: StopRequest | None = None, state: TrainState | None = None, events: list[str] | None = None,
           schedule: LRSchedule | None = None, writer: Records | None = None) -> tuple[TrainState, dict[str, float]]:
    events = events if events is not None else []
    optimizer = RecordingSGD(task.model.parameters(), events)
    state = state or TrainState()
    stats = train_one_epoch(task, batches[state.iteration:], optimizer, RecordingScaler(events),
                            schedule or LRSchedule("cosine", 0.1, 10), state, len(batches),
                            LoopSettings(max_epoch=1, log_period=2, accumulation_steps=accumulation,
                                         on_nonfinite_loss=policy),
                            writer or Records(), stop or StopRequest(), [])
    return state, stats


def _parameters(task: FakeTask) -> Tensor:
    return torch.cat([p.detach().flatten() for p in task.model.parameters()])


def test_the_effects_of_a_step_come_in_order() -> None:
    events: list[str] = []
    lrs: list[float] = []

    class RecordingSchedule(LRSchedule):
        def __call__(self, epoch: float) -> float:
            events.append("lr")
            lrs.append(epoch)
            return super().__call__(epoch)

    task = FakeTask(events)
    _train(task, _batches(4, 2), accumulation=2, events=events, schedule=RecordingSchedule("cosine", 0.1, 10))
    lrs.pop(0)  # the schedule's own check when built
    one_step = ["lr", "zero_grad", "forward", "backward", "forward", "backward", "unscale", "optimizer_step",
                "scaler_update"]
    assert events[1:] == one_step * 2
    # The rate is set at the start of every optimiser step, at its fractional epoch.
    assert lrs == [0.0, 0.5]


@pytest.mark.parametrize("accumulation, batches", [(2, 2), (4, 4), (3, 3)])
def test_accumulated_steps_equal_one_step_on_the_global_batch(accumulation: int, batches: int) -> None:
    micro = _batches(batches, 4)
    global_batch = {"x": torch.cat([b["x"] for b in micro]), "y": torch.cat([b["y"] for b in micro]),
                    "index": torch.cat([b["index"] for b in micro]), "skipped": [], "replaced": 0}
    accumulated, whole = FakeTask(), FakeTask()
    assert torch.equal(_parameters(accumulated), _parameters(whole))
    _train(accumulated, micro, accumulation=accumulation)
    _train(whole, [global_batch])
    torch.testing.assert_close(_parameters(accumulated), _parameters(whole), rtol=1e-6, atol=1e-7)
    assert not torch.equal(_parameters(whole), _parameters(FakeTask()))  # the step moved the weights


def test_the_last_step_of_an_epoch_averages_the_batches_it_has() -> None:
    """5 batches with accumulation 3: a step over batches 0-2, then one over batches 3-4 (their mean gradient)."""
    micro = _batches(5, 2)
    accumulated = FakeTask()
    events: list[str] = []
    _train(accumulated, micro, accumulation=3, events=events)
    assert events.count("optimizer_step") == 2
    reference = FakeTask()
    optimizer = torch.optim.SGD(reference.model.parameters(), lr=0.1)
    schedule = LRSchedule("cosine", 0.1, 10)
    for start, group in ((0, micro[:3]), (3, micro[3:])):
        for g in optimizer.param_groups:
            g["lr"] = schedule(start / 5)
        optimizer.zero_grad()
        x, y = torch.cat([b["x"] for b in group]), torch.cat([b["y"] for b in group])
        (reference.model(x) - y).pow(2).mean().backward()
        optimizer.step()
    torch.testing.assert_close(_parameters(accumulated), _parameters(reference), rtol=1e-6, atol=1e-7)


def test_a_non_finite_loss_raises_naming_the_step_or_drops_the_whole_step() -> None:
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, iteration 2, clips \[2, 3\]"):
        _train(FakeTask(nan_at={1}), _batches(4, 2), accumulation=2)
    # skip: the first optimiser step (batches 0 and 1) is dropped as a whole, the second is taken from the initial
    # weights as if the first had never happened.
    skipping = FakeTask(nan_at={1})
    _, stats = _train(skipping, _batches(4, 2), accumulation=2, policy="skip")
    assert stats["skipped_steps"] == 1.0
    reference = FakeTask()
    optimizer = torch.optim.SGD(reference.model.parameters(), lr=LRSchedule("cosine", 0.1, 10)(0.5))
    batches = _batches(4, 2)[2:]
    x, y = torch.cat([b["x"] for b in batches]), torch.cat([b["y"] for b in batches])
    (reference.model(x) - y).pow(2).mean().backward()
    optimizer.step()
    torch.testing.assert_close(_parameters(skipping), _parameters(reference), rtol=1e-6, atol=1e-7)
    # The epoch's mean loss counts the finite batches only.
    assert math.isfinite(stats["loss"])


def test_a_stop_ends_the_epoch_after_the_step_under_way_and_the_rest_resumes_exactly() -> None:
    batches = _batches(6, 2)
    stop = StopRequest()
    interrupted = FakeTask(stop_at=(2, stop))  # asked to stop during the first batch of the second step
    state, _ = _train(interrupted, batches, accumulation=2, stop=stop)
    assert state.iteration == 4 and state.global_step == 4  # the step of batches 2 and 3 was finished
    # The same command again: a fresh stop flag, the state the checkpoint held, the remaining batches.
    _train(interrupted, batches, accumulation=2, state=state)
    assert state.iteration == 6
    uninterrupted = FakeTask()
    _train(uninterrupted, batches, accumulation=2)
    # The optimiser is plain SGD without momentum, so a fresh one continues exactly.
    torch.testing.assert_close(_parameters(interrupted), _parameters(uninterrupted), rtol=0, atol=0)


def test_the_log_reports_every_period_and_the_epoch_end() -> None:
    writer = Records()
    _train(FakeTask(), _batches(5, 2), writer=writer)
    assert [row["iter"] for row in writer.rows] == ["2/5", "4/5", "5/5"]
    assert all(row["split"] == "train_iter" and math.isfinite(row["loss"]) and row["dt"] > 0 for row in writer.rows)


def test_accumulation_splits_the_global_batch_and_is_validated(tmp_path: Any) -> None:
    from engine_utils import REPO, make_tiny_dataset, run_opts
    from playitback.data.build import build_dataset, build_loader

    data = make_tiny_dataset(tmp_path / "data")
    accumulate = ["TRAIN.BATCH_SIZE", "8", "TRAIN.ACCUMULATION_STEPS", "4"]
    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml", run_opts(data, tmp_path / "run", epochs=1) + accumulate)
    loader = build_loader(cfg, build_dataset(cfg, "train"), "train")
    assert loader.batch_size == 2
    with pytest.raises(ConfigError, match=r"TRAIN.BATCH_SIZE \(8\) must be a multiple of the processes \(1\) times "
                                          r"TRAIN.ACCUMULATION_STEPS \(3\)"):
        load_config(REPO / "configs/Demo/MViT_pretrain.yaml", accumulate[:3] + ["3"])

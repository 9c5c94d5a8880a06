"""Weights & Biases logging (WANDB.*): what MetricWriter sends, the error without wandb, and a real offline run."""
from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from engine_utils import make_tiny_dataset, metrics, run_net, run_opts
from playitback.utils.logging import MetricWriter


class _FakeRun:
    def __init__(self) -> None:
        self.logged: list[tuple[dict[str, Any], int | None]] = []
        self.finished = False

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        self.logged.append((values, step))

    def finish(self) -> None:
        self.finished = True


def test_writer_sends_numeric_stats_under_their_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, init_kwargs = _FakeRun(), {}

    def init(**kwargs: Any) -> _FakeRun:
        init_kwargs.update(kwargs)
        return run

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    writer = MetricWriter(tmp_path, wandb_config={"project": "p", "run_id": "r1", "mode": "offline",
                                                  "config": {"A": 1}, "output_dir": str(tmp_path)})
    writer.write({"split": "train_iter", "loss": 0.5, "iter": "1/3", "dt": 2, "flag": True}, step=7)
    writer.write({"split": "test_final", "top1_acc": 40.0, "checkpoint": "x.pyth"})
    writer.close()
    assert init_kwargs == {"project": "p", "id": "r1", "resume": "allow", "mode": "offline", "config": {"A": 1},
                           "dir": str(tmp_path)}
    assert run.logged == [({"train_iter/loss": 0.5, "train_iter/dt": 2}, 7), ({"test_final/top1_acc": 40.0}, None)]
    assert run.finished
    assert [r["split"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())] == [
        "train_iter", "test_final"]


def test_a_new_run_without_run_id_does_not_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: calls.append(kw) or _FakeRun()))
    MetricWriter(tmp_path, wandb_config={"project": "p", "run_id": "", "mode": "online", "config": {},
                                         "output_dir": str(tmp_path)}).close()
    assert calls[0]["id"] is None and calls[0]["resume"] is None


def test_missing_wandb_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(RuntimeError, match="wandb is not installed: pip install wandb"):
        MetricWriter(tmp_path, wandb_config={"project": "p", "run_id": "", "mode": "offline", "config": {},
                                             "output_dir": str(tmp_path)})


def test_offline_run_logs_the_training_metrics(tmp_path: Path) -> None:
    pytest.importorskip("wandb", reason="wandb is optional and not installed here (pip install wandb)")
    data = make_tiny_dataset(tmp_path / "data")
    out = tmp_path / "run"
    result = run_net("configs/Demo/PlayItBackX2.yaml", run_opts(data, out, epochs=1) + [
        "WANDB.ENABLE", "True", "WANDB.MODE", "offline", "WANDB.RUN_ID", "pibtest", "WANDB.PROJECT", "playitback-ci"])
    (run_file,) = (out / "wandb").glob("offline-run-*-pibtest/run-pibtest.wandb")
    assert run_file.stat().st_size > 0
    # wandb prints the run summary (the last value of every key) when the run finishes.
    printed = re.search(r"train_epoch/loss\s+([0-9.]+)", result.stdout + result.stderr)
    assert printed is not None, (result.stdout + result.stderr)[-3000:]
    assert float(printed.group(1)) == pytest.approx(metrics(out, "train_epoch")[-1]["loss"], rel=1e-4)

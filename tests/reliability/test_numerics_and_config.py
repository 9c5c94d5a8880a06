"""Fault injection: non-finite losses, and configuration/argument errors found before any data is read."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from engine_utils import REPO, make_tiny_dataset, metrics, run_opts
from playitback.config import load_config
from playitback.engine import trainer as trainer_module
from playitback.losses import PlayItBackLoss


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def _nan_on_second_call(monkeypatch: pytest.MonkeyPatch) -> None:
    original = PlayItBackLoss.forward
    calls = {"n": 0}

    def forward(self, outputs, targets):
        losses = original(self, outputs, targets)
        calls["n"] += 1
        if self.training and calls["n"] == 2:
            losses["loss_fused"] = losses["loss_fused"] * math.nan
            losses["loss"] = losses["loss"] + losses["loss_fused"]
        return losses

    monkeypatch.setattr(PlayItBackLoss, "forward", forward)


def test_nonfinite_loss_stops_naming_step_and_terms(data: Path, tmp_path: Path, monkeypatch) -> None:
    _nan_on_second_call(monkeypatch)
    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml", run_opts(data, tmp_path, epochs=1) +
                      ["SOLVER.WARMUP_EPOCHS", "0.0"])
    with pytest.raises(trainer_module.NonFiniteLossError) as err:
        trainer_module.train(cfg)
    message = str(err.value)
    assert "epoch 1, iteration 2" in message and "loss_fused" in message and "nan" in message


def test_nonfinite_loss_skip_mode_drops_and_counts_the_step(data: Path, tmp_path: Path, monkeypatch) -> None:
    _nan_on_second_call(monkeypatch)
    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml", run_opts(data, tmp_path, epochs=1) +
                      ["SOLVER.WARMUP_EPOCHS", "0.0", "TRAIN.ON_NONFINITE_LOSS", "skip"])
    trainer_module.train(cfg)
    epoch = metrics(tmp_path, "train_epoch")[-1]
    assert epoch["skipped_steps"] == 1 and math.isfinite(epoch["loss"])


@pytest.mark.parametrize("opts, message", [
    (["DECODER.DEPTH", "5"], "DECODER.DEPTH (5) must equal MODEL.PLAYBACK + 1 (3)"),
    (["TRAIN.BATCH_SIZE", "7", "NUM_GPUS", "2"], "TRAIN.BATCH_SIZE (7) must be a positive multiple"),
    (["SOLVER.BASE_LR", "fast"], "SOLVER.BASE_LR expects a float"),
    (["SOLVER.BAES_LR", "0.1"], "did you mean SOLVER.BASE_LR"),
])
def test_config_errors_stop_before_any_output(tmp_path: Path, opts: list[str], message: str) -> None:
    out = tmp_path / "never"
    result = subprocess.run([sys.executable, str(REPO / "tools/run_net.py"), "--cfg",
                             str(REPO / "configs/Demo/PlayItBackX2.yaml"), *opts, "OUTPUT_DIR", str(out)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_cfg_file_is_named(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "tools/run_net.py"), "--cfg", str(tmp_path / "nope.yaml")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "nope.yaml does not exist" in result.stderr

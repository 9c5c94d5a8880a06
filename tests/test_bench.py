"""FLOP accounting and MFU (playitback.utils.flops) against hand counts, and the benchmarks run end to end.

Speed is never asserted here (benchmarks print figures); what is checked is that the printed figures are consistent
with each other and with an independent count.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from bench.run_all import markdown
from playitback.config import load_config
from playitback.models import build_model
from playitback.utils.flops import (
    count_flops,
    model_flops_utilisation,
    peak_tflops,
    step_flops,
)

REPO = Path(__file__).resolve().parents[1]


class _ScaledMLP(nn.Module):
    """A Linear child and a matrix product of the module's own: [B, 8] -> [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(8, 16)
        self.outer = nn.Parameter(torch.randn(16, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) @ self.outer


def test_training_flops_count_the_backward_of_trainable_modules_only() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    batch = 3
    first, second = batch * 8 * 16, batch * 16 * 4
    model[0].requires_grad_(False)
    flops = step_flops(model, count_flops(model, (torch.randn(batch, 8),)))
    assert flops.forward == 2 * (first + second)
    assert flops.train_step == 2 * (first + second) + 2 * 2 * second  # the frozen layer has no backward
    model.requires_grad_(True)
    flops = step_flops(model, count_flops(model, (torch.randn(batch, 8),)))
    assert flops.train_step == 3 * flops.forward


def test_a_modules_own_products_are_counted_once_besides_its_children() -> None:
    model = _ScaledMLP()
    batch = 5
    inner, own = batch * 8 * 16, batch * 16 * 4
    model.inner.requires_grad_(False)  # `outer` still trains, so the module's own product has a backward
    flops = step_flops(model, count_flops(model, (torch.randn(batch, 8),)))
    assert flops.forward == 2 * (inner + own)
    assert flops.train_step == 2 * (inner + own) + 2 * 2 * own


@pytest.mark.parametrize("name, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA H100 PCIe", "bf16", 756.5), ("NVIDIA H200", "bf16", 989.4),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("NVIDIA A100 80GB PCIe", "fp32", 19.5), ("NVIDIA A10", "bf16", 125.0),
    ("NVIDIA L4", "bf16", 121.0), ("NVIDIA L40S", "bf16", 362.05), ("Tesla V100-SXM2-32GB", "fp16", 125.0),
    ("Tesla V100-SXM2-32GB", "bf16", None), ("Some Future GPU", "bf16", None),
])
def test_peak_of_known_devices(name: str, dtype: str, peak: float | None) -> None:
    assert peak_tflops(name, dtype) == peak


def test_mfu_is_achieved_over_peak() -> None:
    assert model_flops_utilisation(3e12, 2.0, 2.0) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="positive"):
        model_flops_utilisation(1e12, 0.0, 2.0)


def _run_bench(script: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", f"bench.{Path(script).stem}", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def model_bench() -> dict:
    return _run_bench("model.py", "--sizes", "demo", "--models", "encoder", "X1", "--batch", "2", "--warmup", "1",
                      "--iters", "2", "--threads", "1", "--peak-tflops", "0.5")


def test_model_bench_figures_agree_with_each_other_and_with_fvcore(model_bench: dict) -> None:
    encoder, x1 = model_bench["results"]
    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml", ["NUM_GPUS", "0", "TRAIN.MIXED_PRECISION", "False"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        macs = count_flops(model, ([torch.randn(1, cfg.AUDIO_DATA.FRAMES0, 128)],)).total
    assert encoder["forward_gflops_per_sample"] == pytest.approx(2 * macs / 1e9, abs=1e-3)
    assert encoder["train_step_gflops_per_sample"] == pytest.approx(3 * encoder["forward_gflops_per_sample"],
                                                                     abs=2e-3)  # trained end to end
    # The demo PlayItBack fine-tunes its encoder (only the encoder's head, a few kFLOPs, is frozen): 3x its forward.
    assert x1["train_step_gflops_per_sample"] == pytest.approx(3 * x1["forward_gflops_per_sample"], abs=3e-3)
    for row in (encoder, x1):
        assert row["forward_samples_per_s"] == pytest.approx(2 / (row["forward_ms"] / 1e3), rel=1e-2)
        achieved = row["forward_gflops_per_sample"] * row["forward_samples_per_s"] / 1e3
        assert row["forward_tflops_per_s"] == pytest.approx(achieved, rel=1e-2, abs=1e-4)
        # Both figures are rounded to 4 decimals: the ratio over a 0.5 peak carries 2e-4 of the rounding.
        assert row["forward_backward_mfu"] == pytest.approx(row["forward_backward_tflops_per_s"] / 0.5, rel=1e-2,
                                                            abs=3e-4)


def test_model_bench_times_each_saliency_variant() -> None:
    result = _run_bench("model.py", "--sizes", "demo", "--models", "X1", "--saliency", "slots", "evidence",
                        "--batch", "2", "--warmup", "0", "--iters", "1", "--threads", "1")
    slots, evidence = result["results"]
    assert (slots["saliency"], evidence["saliency"]) == ("slots", "evidence")
    # The evidence head replaces the slot attention: other parameters, other FLOPs, the same encoder and decoder.
    assert slots["params_M"] != evidence["params_M"]
    assert slots["forward_gflops_per_sample"] != evidence["forward_gflops_per_sample"]


def test_bench_scripts_refuse_impossible_requests() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.model", "--sync-debug"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "needs --device cuda" in result.stderr


@pytest.fixture(scope="module")
def train_bench() -> dict:
    return _run_bench("train.py", "--configs", "encoder_pretrain", "--batch", "4", "--warmup", "1", "--iters", "2",
                      "--workers", "1", "--peak-tflops", "0.5")


def test_train_bench_runs_the_real_loop_with_a_loader(train_bench: dict) -> None:
    (row,) = train_bench["results"]
    assert row["frontend"] == "workers" and row["autocast"] == "fp32" and row["workers"] == 1
    assert 0 <= row["data_wait_fraction"] < 1
    assert row["loader_over_preloaded"] == pytest.approx(row["loader_samples_per_s"] / row["preloaded_samples_per_s"],
                                                         rel=1e-2)
    assert row["loader_mfu"] == pytest.approx(row["loader_tflops_per_s"] / 0.5, rel=1e-2, abs=3e-4)
    assert row["loader_peak_rss_total_GB"] > 0


@pytest.fixture(scope="module")
def storage_bench() -> dict:
    return _run_bench("storage.py", "--clips", "8", "--seconds", "2", "--repeats", "1", "--workers", "2", "--draws",
                      "32", "--batch", "4")


def test_storage_bench_times_every_storage_on_the_same_clips(storage_bench: dict) -> None:
    storages = ["files wav", "files flac", "files mp3", "shards pcm16", "shards flac", "shards mp3"]
    assert [r["storage"] for r in storage_bench["decode"]] == storages
    assert [(r["storage"], r["workers"]) for r in storage_bench["loader"]] == [(s, 2) for s in storages[1:]]
    sizes = storage_bench["generated_bytes_per_clip"]
    # 2 s of 16-bit mono at 16 kHz is 64,000 bytes: the pcm16 shards hold exactly that (plus the HDF5 overhead).
    assert 64000 <= sizes["shards pcm16"] < 64000 * 1.1 and sizes["shards mp3"] < sizes["shards flac"] < 64000
    for row in storage_bench["decode"]:
        assert row["ms_per_clip"] == pytest.approx(1e3 / row["clips_per_cpu_s"], rel=2e-2)
    for row in storage_bench["loader"]:
        assert row["batch_shape"] == [4, 32000]
        assert row["clips_per_s_per_core"] == pytest.approx(row["clips_per_s"] / min(2, os.cpu_count()), rel=1e-2)


def test_the_report_renders_every_benchmark(model_bench: dict, train_bench: dict, storage_bench: dict) -> None:
    command = {"command": ".venv/bin/python -m bench.x", "wall_s": 1.0}
    report = markdown("test-machine", {"model": {**model_bench, **command}, "train": {**train_bench, **command},
                                       "storage": {**storage_bench, **command}})
    assert "## model" in report and "## train" in report and "## storage" in report
    assert len([line for line in report.splitlines() if line.startswith("| shards pcm16 |")]) == 2
    lines = report.splitlines()
    model_rows = [line for line in lines if line.startswith("| demo |")]
    assert len(model_rows) == 2
    train_rows = [line for line in lines if line.startswith("| encoder_pretrain |")]
    assert len(train_rows) == 1

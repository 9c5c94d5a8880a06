"""End-to-end training throughput: the real DataLoader against the same batches pre-loaded in memory.

    .venv/bin/python -m bench.train                    # CPU: demo PlayItBackX2 and the demo encoder pretraining
    .venv/bin/python -m bench.train --device cuda --configs MViTv2_B PlayItBackX3 --workers 8 --batch 64 \
        --amp bf16 --iters 20                          # the GPU protocol of python -m bench.run_all --device cuda

Prints one JSON line. For each config a dataset of generated clips in the demo layout (VGG-Sound annotations, WAV
files at the config's sample rate, as long as its crops) is written into a temporary folder, and the config trains
through the library's own loop, ``playitback.engine.loop.train_one_epoch``, with its own dataset, loader, task,
optimiser and parameter groups, twice:

* ``loader``: batches come from ``build_loader`` with ``--workers`` worker processes (as in a real run);
* ``preloaded``: the same batches, read once beforehand and kept in memory (no data time at all).

Configs: ``PlayItBackX2`` and ``encoder_pretrain`` (configs/Demo, the defaults), ``MViTv2_B`` and ``PlayItBackX3``
(the shipped configs/VGG-Sound ones; a GPU's work). The loop logs every ``--warmup`` iterations (LOG_PERIOD): the
window's mean ``dt`` (whole step, data wait included, measured after the device finished the window's work) and
``dt_data`` (time spent waiting for the batch). The first window, the ``--warmup`` iterations of worker start-up and
allocator warm-up, is dropped; the figures are over the next ``--iters`` (``*_step_ms`` is the median of the windows'
mean steps). Reading the logged losses waits for the device once per window, as LOG_PERIOD does in a real run. ``loader_over_preloaded``
is the target figure (at least 0.8); ``data_wait_fraction`` is dt_data / dt of the loader run. ``--compile`` adds a
third run, the pre-loaded batches with MODEL.COMPILE True (``compiled_preloaded_*``, ``compile_speedup``). FLOPs per sample and
MFU as in bench/model.py (``*_mfu`` where the device's peak is known or given with ``--peak-tflops``). Peak host
memory: ``peak_rss_main_GB`` (the main process's high-water mark) and ``peak_rss_total_GB`` (main process plus
workers, sampled every iteration with psutil); on CUDA, ``peak_device_memory_GB``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# As tools/run_net.py does, before torch starts OpenMP: spinning threads steal the workers' cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import psutil  # noqa: E402
import torch  # noqa: E402
from fvcore.common.config import CfgNode  # noqa: E402

from bench.model import AMP_OPTS, bench_device, machine, per_sample_flops  # noqa: E402
from playitback.config import load_config  # noqa: E402
from playitback.data.build import build_dataset, build_loader  # noqa: E402
from playitback.engine.build import (  # noqa: E402
    amp_dtype,
    build_loop_settings,
    build_lr_schedule,
    build_task,
    build_training_optimizer,
    select_device,
    wrap_model,
)
from playitback.engine.loop import StopRequest, TrainState, first_batches, train_one_epoch  # noqa: E402
from playitback.models import build_model  # noqa: E402
from playitback.models.build import example_playbacks  # noqa: E402
from playitback.synthetic.demo import make_demo_dataset  # noqa: E402
from playitback.utils.distributed import unwrap_model  # noqa: E402
from playitback.utils.flops import StepFlops, model_flops_utilisation, peak_tflops  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {"PlayItBackX2": "configs/Demo/PlayItBackX2.yaml", "encoder_pretrain": "configs/Demo/MViT_pretrain.yaml",
           "MViTv2_B": "configs/VGG-Sound/MViTv2_B.yaml", "PlayItBackX3": "configs/VGG-Sound/PlayItBackX3.yaml"}
DEMO_CONFIGS = ["PlayItBackX2", "encoder_pretrain"]
NUM_CLASSES = 8  # classes of the generated data (any count up to the model's works)
AUTOCAST_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class StepRecorder:
    """Stands in for the trainer's MetricWriter: keeps each logging window's steps, mean dt and mean dt_data (from the
    train_iter records) and samples host memory."""

    def __init__(self) -> None:
        self.windows: list[tuple[int, int, float, float]] = []  # (first iteration, steps, dt, dt_data)
        self.peak_rss_total = 0

    def write(self, stats: dict[str, Any], step: int | None = None) -> None:
        if stats.get("split") == "train_iter":
            last = int(stats["iter"].split("/")[0])
            first = self.windows[-1][0] + self.windows[-1][1] if self.windows else 0
            self.windows.append((first, last - first, stats["dt"], stats["dt_data"]))
            process = psutil.Process()
            rss = process.memory_info().rss
            for child in process.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak_rss_total = max(self.peak_rss_total, rss)

    def close(self) -> None:
        """Nothing to flush."""


def run_steps(cfg: CfgNode, batches: Iterable[dict[str, Any]], device: torch.device, iters: int) -> StepRecorder:
    """Train a fresh model of `cfg` on `batches` (`iters` of them) with the library's loop; returns the step times."""
    torch.manual_seed(cfg.RNG_SEED)
    model = wrap_model(cfg, build_model(cfg), device)
    optimizer = build_training_optimizer(cfg, unwrap_model(model))
    task = build_task(cfg, model, device, train=True)
    scaler = torch.amp.GradScaler(device.type, enabled=task.amp_dtype == torch.float16)
    recorder = StepRecorder()
    train_one_epoch(task, batches, optimizer, scaler, build_lr_schedule(cfg), TrainState(), iters,
                    build_loop_settings(cfg), recorder, StopRequest(), [])
    return recorder


def timed_windows(recorder: StepRecorder, warmup: int) -> list[tuple[int, float, float]]:
    """(steps, mean dt, mean dt_data) of the logging windows after the first `warmup` iterations."""
    windows = [(steps, dt, data) for first, steps, dt, data in recorder.windows if first >= warmup]
    if not windows:
        raise ValueError(f"no logging window after the {warmup} warm-up iterations; raise --iters")
    return windows


def config_flops(cfg: CfgNode, device: torch.device) -> StepFlops:
    """Per-sample FLOPs of the config's model, counted on random playbacks of the dataset's shapes."""
    model = build_model(cfg).to(device)
    flops = per_sample_flops(model, example_playbacks(cfg, 1, device))
    del model
    return flops


def bench_config(name: str, work_dir: Path, device: torch.device, workers: int, warmup: int, iters: int, batch: int,
                 amp: str, peak: float | None, compile_model: bool = False) -> dict[str, Any]:
    """Loader and pre-loaded throughput of one config on generated clips written under `work_dir`; `peak` is the
    device's peak TFLOP/s for the MFU (None: the data sheet's for a known GPU); `compile_model` adds a pre-loaded run
    with MODEL.COMPILE True (its first warm-up step includes the compilation)."""
    total = warmup + iters
    opts = ["NUM_GPUS", "1" if device.type == "cuda" else "0", "DATA_LOADER.NUM_WORKERS", str(workers),
            "TRAIN.BATCH_SIZE", str(batch), "LOG_PERIOD", str(max(warmup, 1)), "OUTPUT_DIR", str(work_dir / "runs" / name),
            *(AMP_OPTS[amp] if amp != "config" else [])]
    cfg = load_config(str(REPO / CONFIGS[name]), opts)
    data_root = work_dir / "data" / name
    make_demo_dataset(data_root, num_classes=NUM_CLASSES, train_per_class=-(-total * batch // NUM_CLASSES),
                      test_per_class=1, clip_secs=cfg.AUDIO_DATA.CLIP_SECS,
                      sample_rate=cfg.AUDIO_DATA.SAMPLING_RATE, seed=0)
    cfg.defrost()
    cfg.VGGSOUND.AUDIO_DATA_DIR, cfg.VGGSOUND.ANNOTATIONS_DIR = str(data_root / "audio"), str(data_root / "annotations")
    cfg.freeze()
    if device.type == "cpu":
        select_device(cfg)  # the trainer's thread policy: the cores are shared with the workers
    flops = config_flops(cfg, device)
    dataset = build_dataset(cfg, "train")
    preloaded = list(first_batches(build_loader(cfg, dataset, "train"), total))
    if len(preloaded) < total:
        raise ValueError(f"the generated dataset has {len(preloaded)} batches, fewer than --warmup + --iters ({total})")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = {"preloaded": run_steps(cfg, preloaded, device, total)}
    if compile_model:
        compiled_cfg = cfg.clone()
        compiled_cfg.defrost()
        compiled_cfg.MODEL.COMPILE = True
        runs["compiled_preloaded"] = run_steps(compiled_cfg, preloaded, device, total)
    del preloaded
    runs["loader"] = run_steps(cfg, first_batches(build_loader(cfg, dataset, "train"), total), device, total)
    autocast = AUTOCAST_NAMES[amp_dtype(cfg, device)]
    if peak is None and device.type == "cuda":
        peak = peak_tflops(torch.cuda.get_device_name(device), autocast)
    result: dict[str, Any] = {"config": CONFIGS[name], "workers": workers, "batch": batch,
                              "frontend": "device" if "waveform" in dataset[0] else "workers", "autocast": autocast,
                              "peak_tflops": peak, "train_step_gflops_per_sample": round(flops.train_step / 1e9, 3)}
    for run_name, recorder in runs.items():
        windows = timed_windows(recorder, warmup)
        step_s = statistics.median(dt for _, dt, _ in windows)
        mean_step_s = sum(steps * dt for steps, dt, _ in windows) / sum(steps for steps, _, _ in windows)
        result[f"{run_name}_step_ms"] = round(step_s * 1e3, 1)
        result[f"{run_name}_samples_per_s"] = round(batch / mean_step_s, 1)
        result[f"{run_name}_tflops_per_s"] = round(flops.train_step * batch / mean_step_s / 1e12, 4)
        if peak:
            result[f"{run_name}_mfu"] = round(model_flops_utilisation(flops.train_step * batch, mean_step_s, peak), 4)
        result[f"{run_name}_peak_rss_total_GB"] = round(recorder.peak_rss_total / 2**30, 3)
    loader = timed_windows(runs["loader"], warmup)
    result["data_wait_fraction"] = round(sum(steps * data for steps, _, data in loader)
                                         / sum(steps * dt for steps, dt, _ in loader), 3)
    result["loader_over_preloaded"] = round(result["loader_samples_per_s"] / result["preloaded_samples_per_s"], 3)
    result["meets_0.8_target"] = result["loader_over_preloaded"] >= 0.8
    if compile_model:
        result["compile_speedup"] = round(result["compiled_preloaded_samples_per_s"]
                                          / result["preloaded_samples_per_s"], 3)
    if device.type == "cuda":
        result["peak_device_memory_GB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return result


def main() -> None:
    """Time every asked config on its generated data and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the front-end moves to the device on cuda)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the loader run")
    parser.add_argument("--batch", type=int, default=32, help="clips per batch (the demo's TRAIN.BATCH_SIZE)")
    parser.add_argument("--warmup", type=int, default=2, help="iterations dropped from the figures")
    parser.add_argument("--iters", type=int, default=6, help="iterations timed")
    parser.add_argument("--configs", nargs="+", default=DEMO_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--amp", default="config", choices=["config", *AMP_OPTS],
                        help="autocast of the training step (config: the config's TRAIN.MIXED_PRECISION/AMP_DTYPE)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak TFLOP/s of the device for the autocast dtype (default: data sheet of known GPUs)")
    parser.add_argument("--compile", action="store_true",
                        help="also train the pre-loaded batches with MODEL.COMPILE True (compile_speedup)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the main process (default: the trainer's policy, cores / (workers + 1))")
    args = parser.parse_args()
    device = bench_device(parser, args.device, args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="playitback_bench_train_") as tmp:
        for name in args.configs:
            results.append({"model": name, **bench_config(name, Path(tmp), device, args.workers, args.warmup,
                                                          args.iters, args.batch, args.amp, args.peak_tflops,
                                                          args.compile)})
    print(json.dumps({
        "bench": "train", "device": str(device), "warmup": args.warmup, "iters": args.iters, **machine(device),
        "peak_rss_main_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "results": results,
    }))


if __name__ == "__main__":
    main()

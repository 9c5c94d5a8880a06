"""End-to-end training throughput: the real DataLoader against the same batches pre-loaded in memory.

    .venv/bin/python bench/train.py                    # CPU: demo PlayItBackX2 and the demo encoder pretraining
    .venv/bin/python bench/train.py --device cuda      # on a GPU (the front-end then runs batched on the device)

Prints one JSON line. The demo dataset is generated into a temporary folder and each config (configs/Demo) trains
through the library's own loop, ``playitback.engine.trainer.train_one_epoch``, with its own dataset, loader, task,
optimiser and parameter groups, twice:

* ``loader``: batches come from ``build_loader`` with ``--workers`` worker processes (as in a real run);
* ``preloaded``: the same batches, read once beforehand and kept in memory (no data time at all).

The loop logs every iteration (LOG_PERIOD 1): its ``dt`` (whole step, data wait included) and ``dt_data`` (time
spent waiting for the batch). The first ``--warmup`` iterations (worker start-up, allocator warm-up) are dropped; the
figures are over the next ``--iters``. ``loader_over_preloaded`` is the target figure (at least 0.8);
``data_wait_fraction`` is dt_data / dt of the loader run. Peak host memory: ``peak_rss_main_GB`` (the main process's
high-water mark) and ``peak_rss_total_GB`` (main process plus workers, sampled every iteration with psutil); on CUDA,
``peak_device_memory_GB``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# As tools/run_net.py does, before torch starts OpenMP: spinning threads steal the workers' cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import psutil  # noqa: E402
import torch  # noqa: E402
from fvcore.common.config import CfgNode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.model import bench_device, machine  # noqa: E402
from playitback.config import load_config  # noqa: E402
from playitback.data.build import build_dataset, build_loader  # noqa: E402
from playitback.data.demo import make_demo_dataset  # noqa: E402
from playitback.engine.trainer import (  # noqa: E402
    StopRequest,
    TrainState,
    build_task,
    build_training_optimizer,
    first_batches,
    select_device,
    train_one_epoch,
)
from playitback.models import build_model  # noqa: E402

CONFIGS = {"PlayItBackX2": "configs/Demo/PlayItBackX2.yaml", "encoder_pretrain": "configs/Demo/MViT_pretrain.yaml"}


class StepRecorder:
    """Stands in for the trainer's MetricWriter: keeps each iteration's dt and dt_data and samples host memory."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float]] = []
        self.peak_rss_total = 0

    def write(self, stats: dict[str, Any], step: int | None = None) -> None:
        if stats.get("split") == "train_iter":
            self.steps.append((stats["dt"], stats["dt_data"]))
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
    model = build_model(cfg).to(device)
    optimizer = build_training_optimizer(cfg, model)
    task = build_task(cfg, model, device, train=True)
    scaler = torch.amp.GradScaler(device.type, enabled=task.amp_dtype == torch.float16)
    recorder = StepRecorder()
    train_one_epoch(cfg, task, batches, optimizer, scaler, TrainState(), iters, recorder, StopRequest(), [])
    return recorder


def bench_config(name: str, data_root: Path, out_dir: Path, device: torch.device, workers: int, warmup: int,
                 iters: int, batch: int) -> dict[str, Any]:
    """Loader and pre-loaded throughput of one Demo config."""
    cfg = load_config(str(REPO / CONFIGS[name]), [
        "NUM_GPUS", "1" if device.type == "cuda" else "0", "VGGSOUND.AUDIO_DATA_DIR", str(data_root / "audio"),
        "VGGSOUND.ANNOTATIONS_DIR", str(data_root / "annotations"), "DATA_LOADER.NUM_WORKERS", str(workers),
        "TRAIN.BATCH_SIZE", str(batch), "LOG_PERIOD", "1", "OUTPUT_DIR", str(out_dir / name),
    ])
    total = warmup + iters
    if device.type == "cpu":
        select_device(cfg)  # the trainer's thread policy: the cores are shared with the workers
    dataset = build_dataset(cfg, "train")
    preloaded = list(first_batches(build_loader(cfg, dataset, "train"), total))
    if len(preloaded) < total:
        raise ValueError(f"the generated dataset has {len(preloaded)} batches, fewer than --warmup + --iters ({total})")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = {"preloaded": run_steps(cfg, preloaded, device, total)}
    del preloaded
    runs["loader"] = run_steps(cfg, first_batches(build_loader(cfg, dataset, "train"), total), device, total)
    result: dict[str, Any] = {"config": CONFIGS[name], "workers": workers, "batch": batch,
                              "frontend": "device" if "waveform" in dataset[0] else "workers"}
    for run_name, recorder in runs.items():
        steps = recorder.steps[warmup:]
        step_s = statistics.median(dt for dt, _ in steps)
        result[f"{run_name}_step_ms"] = round(step_s * 1e3, 1)
        result[f"{run_name}_samples_per_s"] = round(batch * len(steps) / sum(dt for dt, _ in steps), 1)
        result[f"{run_name}_peak_rss_total_GB"] = round(recorder.peak_rss_total / 2**30, 3)
    loader_steps = runs["loader"].steps[warmup:]
    result["data_wait_fraction"] = round(sum(d for _, d in loader_steps) / sum(dt for dt, _ in loader_steps), 3)
    result["loader_over_preloaded"] = round(result["loader_samples_per_s"] / result["preloaded_samples_per_s"], 3)
    result["meets_0.8_target"] = result["loader_over_preloaded"] >= 0.8
    if device.type == "cuda":
        result["peak_device_memory_GB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return result


def main() -> None:
    """Generate the demo data, time both configs and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the front-end moves to the device on cuda)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the loader run")
    parser.add_argument("--batch", type=int, default=32, help="clips per batch (the demo's TRAIN.BATCH_SIZE)")
    parser.add_argument("--warmup", type=int, default=2, help="iterations dropped from the figures")
    parser.add_argument("--iters", type=int, default=6, help="iterations timed")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the main process (default: the trainer's policy, cores / (workers + 1))")
    args = parser.parse_args()
    device = bench_device(parser, args.device, args.threads)
    num_classes = 8
    per_class = -(-(args.warmup + args.iters) * args.batch // num_classes)
    results = []
    with tempfile.TemporaryDirectory(prefix="playitback_bench_train_") as tmp:
        root = Path(tmp)
        make_demo_dataset(root / "data", num_classes=num_classes, train_per_class=per_class, test_per_class=1,
                          clip_secs=4.0, seed=0)
        for name in args.configs:
            results.append({"model": name, **bench_config(name, root / "data", root / "runs", device, args.workers,
                                                          args.warmup, args.iters, args.batch)})
    print(json.dumps({
        "bench": "train", "device": str(device), "warmup": args.warmup, "iters": args.iters, **machine(),
        "peak_rss_main_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "results": results,
    }))


if __name__ == "__main__":
    main()

"""Model throughput: forward and forward+backward milliseconds per batch of PlayItBack X1/X2/X3 and the encoder alone.

    .venv/bin/python bench/model.py                               # CPU, fp32, demo and small sizes, batch 8
    .venv/bin/python bench/model.py --device cuda --dtype bf16    # on a GPU under bf16 autocast
    .venv/bin/python bench/model.py --full                        # the shipped MViTv2-B configs (batch 1, 2 iters)

Prints one JSON line. Sizes:

* ``demo``: configs/Demo (4 s crops, T0 64, a 4-block MViTv2 of width 128, TemPr latents 128).
* ``small``: the demo recipe at a research-like resolution: 5 s crops, T0 200, 6 blocks of width 192.
* ``full`` (--full): configs/VGG-Sound PlayItBackX1/X2/X3 and MViTv2_B (5 s, T0 400, MViTv2-B).

For each size: ``encoder`` is the encoder-only model (stage 1, trained end to end) and ``X1``-``X3`` PlayItBack with
1-3 replays on the frozen encoder (stage 2, as configured). "forward" is the eval-mode forward without autograd;
"forward_backward" the train-mode forward, the training loss and its backward (no optimiser step). Inputs are random
playbacks shaped as the dataset makes them. Each figure is the median (and the minimum, ``*_min_ms``) of ``--iters``
timed iterations after ``--warmup`` untimed ones. On a CPU shared with other processes, multi-threaded kernels wait
for the descheduled thread at every barrier and can run many times slower: compare ``--threads 1`` and the recorded
``load_average_1min``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fvcore.common.config import CfgNode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from playitback.config import derived, load_config  # noqa: E402
from playitback.engine.trainer import build_task  # noqa: E402
from playitback.losses import labels_to_targets  # noqa: E402
from playitback.models import build_model  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SIZES: dict[str, dict[str, Any]] = {
    "demo": {"dir": "configs/Demo", "encoder": "MViT_pretrain.yaml", "playitback": "PlayItBackX2.yaml", "opts": []},
    "small": {
        "dir": "configs/Demo", "encoder": "MViT_pretrain.yaml", "playitback": "PlayItBackX2.yaml",
        "opts": ["AUDIO_DATA.CLIP_SECS", "5.0", "AUDIO_DATA.FRAMES0", "200", "ENCODER.EMBED_DIM", "48",
                 "ENCODER.DEPTH", "6", "ENCODER.DIM_MUL", "[[1, 2.0], [4, 2.0]]", "ENCODER.HEAD_MUL",
                 "[[1, 2.0], [4, 2.0]]", "ENCODER.POOL_Q_STRIDE", "[[1, 2, 2], [4, 2, 2]]",
                 "DECODER.INPUT_CHANNELS", "192"],
    },
    "full": {"dir": "configs/VGG-Sound", "encoder": "MViTv2_B.yaml", "playitback": "PlayItBackX{k}.yaml", "opts": []},
}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings on a GPU are otherwise launch times)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_seconds(run: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Wall times of `iters` calls of `run` after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            # Other processes on the same cores slow multi-threaded CPU kernels a lot: record how busy it was.
            "load_average_1min": round(os.getloadavg()[0], 2)}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def size_configs(size: str, models: list[str]) -> dict[str, CfgNode]:
    """The configs of a size: "encoder" and "X<k>" as asked."""
    spec = SIZES[size]
    configs = {}
    for name in models:
        if name == "encoder":
            path, extra = spec["encoder"], []
        else:
            replays = int(name.removeprefix("X"))
            # The Demo PlayItBack config is X2; other replay counts change PLAYBACK and the decoder depth with it.
            path = spec["playitback"].format(k=replays)
            extra = [] if "{k}" in spec["playitback"] else ["MODEL.PLAYBACK", str(replays),
                                                            "DECODER.DEPTH", str(replays + 1)]
        configs[name] = load_config(str(REPO / spec["dir"] / path), ["NUM_GPUS", "0", *spec["opts"], *extra])
    return configs


def top_ops(run: Callable[[], Any], device: torch.device, count: int) -> list[dict[str, Any]]:
    """The `count` operators with the most self time in one call of `run` (torch.profiler), with their share."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        run()
        sync(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(profiler.key_averages(), key=lambda e: getattr(e, attribute), reverse=True)
    total = sum(getattr(e, attribute) for e in events) or 1.0
    return [{"op": e.key, "self_ms": round(getattr(e, attribute) / 1e3, 2), "calls": e.count,
             "share": round(getattr(e, attribute) / total, 3)} for e in events[:count]]


def bench_config(cfg: CfgNode, batch: int, device: torch.device, amp_dtype: torch.dtype | None, warmup: int,
                 iters: int, profile_top: int = 0) -> dict[str, Any]:
    """Forward and forward+backward timings of one config's model (and, with `profile_top`, the top operators of one
    forward+backward).

    Inputs: S playbacks [batch, T0 * (i + 1), F] of seeded noise and random labels.
    """
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    loss_fn = build_task(cfg, model, device, train=False).loss_fn
    counts = derived.class_counts(cfg)
    frames0, mels = cfg.AUDIO_DATA.FRAMES0, cfg.AUDIO_DATA.NUM_FREQUENCIES
    playbacks = [torch.randn(batch, frames0 * (i + 1), mels, device=device) for i in range(derived.num_playbacks(cfg))]
    targets = labels_to_targets(torch.randint(0, counts[0], (batch,), device=device), counts, cfg.DATA.MULTI_LABEL)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def forward() -> None:
        with torch.inference_mode(), autocast:
            model(playbacks)

    def forward_backward() -> None:
        with autocast:
            outputs = model(playbacks)
        outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
        loss_fn(outputs, targets)["loss"].backward()

    model.eval()
    forward_times = timed_seconds(forward, device, warmup, iters)
    model.train()
    train_times = timed_seconds(forward_backward, device, warmup, iters)
    forward_s, train_s = statistics.median(forward_times), statistics.median(train_times)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = {
        "params_M": round(params / 1e6, 3),
        "trainable_params_M": round(trainable / 1e6, 3),
        "input_frames": [p.shape[1] for p in playbacks],
        "forward_ms": round(forward_s * 1e3, 2),
        "forward_backward_ms": round(train_s * 1e3, 2),
        "forward_min_ms": round(min(forward_times) * 1e3, 2),
        "forward_backward_min_ms": round(min(train_times) * 1e3, 2),
        "forward_samples_per_s": round(batch / forward_s, 2),
        "forward_backward_samples_per_s": round(batch / train_s, 2),
    }
    if profile_top:
        result["top_ops_forward_backward"] = top_ops(forward_backward, device, profile_top)
    if device.type == "cuda":
        result["peak_device_memory_GB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        torch.cuda.reset_peak_memory_stats(device)
    return result


def bench_device(parser: argparse.ArgumentParser, name: str, threads: int | None) -> torch.device:
    """The device of a benchmark run (and its CPU thread count when given); a missing GPU is a usage error."""
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name} was asked for but torch.cuda.is_available() is False")
    return device


def main() -> None:
    """Parse the command line, time every (size, model) pair and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="autocast dtype (fp32: none)")
    parser.add_argument("--batch", type=int, default=None, help="clips per batch (default 8; 1 with --full)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 2; 1 with --full)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default 5; 2 with --full)")
    parser.add_argument("--sizes", nargs="+", default=None, choices=sorted(SIZES),
                        help="sizes to time (default demo small; full with --full)")
    parser.add_argument("--models", nargs="+", default=["encoder", "X1", "X2", "X3"],
                        help="encoder and/or X1 X2 X3")
    parser.add_argument("--full", action="store_true", help="the shipped MViTv2-B configs (slow on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also list the N operators with the most self time in one forward+backward")
    args = parser.parse_args()
    device = bench_device(parser, args.device, args.threads)
    if device.type == "cpu" and args.dtype == "fp16":
        parser.error("fp16 autocast is a GPU feature; use --dtype bf16 on the CPU")
    bad = [m for m in args.models if m != "encoder" and m not in ("X1", "X2", "X3")]
    if bad:
        parser.error(f"--models takes encoder, X1, X2, X3; got {bad}")
    batch = args.batch or (1 if args.full else 8)
    warmup = args.warmup if args.warmup is not None else (1 if args.full else 2)
    iters = args.iters or (2 if args.full else 5)
    sizes = args.sizes or (["full"] if args.full else ["demo", "small"])
    results = []
    for size in sizes:
        for name, cfg in size_configs(size, args.models).items():
            timing = bench_config(cfg, batch, device, DTYPES[args.dtype], warmup, iters, args.profile)
            results.append({"size": size, "model": name, **timing})
    print(json.dumps({"bench": "model", "device": str(device), "dtype": args.dtype, "batch": batch,
                      "warmup": warmup, "iters": iters, **machine(), "results": results}))


if __name__ == "__main__":
    main()

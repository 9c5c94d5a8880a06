"""Model throughput: forward and forward+backward time of PlayItBack X1/X2/X3 and the encoder alone, with FLOPs, MFU,
the ``torch.compile`` speed-up and a host-synchronisation check.

    .venv/bin/python -m bench.model                               # CPU, fp32, demo and small sizes, batch 8
    .venv/bin/python -m bench.model --compile                     # also time torch.compile'd models side by side
    .venv/bin/python -m bench.model --models X2 --saliency slots slots_budget_priors evidence
                                                                  # the extra compute of each saliency variant
    .venv/bin/python -m bench.model --device cuda --dtype bf16 --full --batch 64 --compile --sync-debug
                                                                  # the GPU protocol of python -m bench.run_all --device cuda

Prints one JSON line. Sizes:

* ``demo``: configs/Demo (4 s crops, T0 64, a 4-block MViTv2 of width 128, TemPr latents 128).
* ``small``: the demo recipe at a research-like resolution: 5 s crops, T0 200, 6 blocks of width 192.
* ``mvitv2_s``, ``mvitv2_b`` (``--full`` = both): the shipped VGG-Sound configs (5 s, T0 400): MViTv2_S.yaml and
  PlayItBackX1_S.yaml (X2, X3: the same with MODEL.PLAYBACK and DECODER.DEPTH raised), MViTv2_B.yaml and
  PlayItBackX1/X2/X3.yaml.

For each size: ``encoder`` is the encoder-only model (stage 1, trained end to end) and ``X1``-``X3`` PlayItBack with
1-3 replays on the frozen encoder (stage 2, as configured). "forward" is the eval-mode forward without autograd;
"forward_backward" the train-mode forward, the training loss and its backward (no optimiser step). Inputs are random
playbacks shaped as the dataset makes them. Each figure is the median (and the minimum, ``*_min_ms``) of ``--iters``
timed iterations after ``--warmup`` untimed ones. On a CPU shared with other processes, multi-threaded kernels wait
for the descheduled thread at every barrier and can run many times slower: compare ``--threads 1`` and the recorded
``load_average_1min``.

FLOPs (``playitback.utils.flops``) are fvcore's multiply-adds times 2, per sample; a training step counts the backward
of the modules that train as twice their forward. ``*_tflops_per_s`` is what the step achieved and ``*_mfu`` that
over the device's data-sheet peak for the dtype (known GPUs, or ``--peak-tflops``). ``--compile`` times
``torch.compile(model)`` after the eager model in the same process (``compiled_*`` figures, ``compile_speedup_*`` =
eager / compiled time, ``compile_s`` the first compiled calls). ``--sync-debug`` (CUDA) runs one eval forward and one
training step of the library's task (device front-end from pinned waveforms, SpecAugment, MixUp, forward, loss,
backward) under ``torch.cuda.set_sync_debug_mode("error")``: "ok", or the error of the first host synchronisation.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fvcore.common.config import CfgNode
from torch import Tensor, nn

from playitback.config import derived, load_config
from playitback.data.build import build_label_space
from playitback.engine.build import build_loss, build_task
from playitback.losses import labels_to_targets
from playitback.models import build_model
from playitback.models.build import example_playbacks
from playitback.models.output import ModelOutput
from playitback.utils.flops import (
    StepFlops,
    count_flops,
    model_flops_utilisation,
    peak_tflops,
    step_flops,
)

REPO = Path(__file__).resolve().parents[1]

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
    "mvitv2_s": {"dir": "configs/VGG-Sound", "encoder": "MViTv2_S.yaml", "playitback": "PlayItBackX1_S.yaml",
                 "opts": []},
    "mvitv2_b": {"dir": "configs/VGG-Sound", "encoder": "MViTv2_B.yaml", "playitback": "PlayItBackX{k}.yaml",
                 "opts": []},
}
FULL_SIZES = ["mvitv2_s", "mvitv2_b"]
AMP_OPTS = {"fp32": ["TRAIN.MIXED_PRECISION", "False"],
            "bf16": ["TRAIN.MIXED_PRECISION", "True", "TRAIN.AMP_DTYPE", "bfloat16"],
            "fp16": ["TRAIN.MIXED_PRECISION", "True", "TRAIN.AMP_DTYPE", "float16"]}


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


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """What the figures were measured on (the GPU: `device` when it is a CUDA device, else the first one)."""
    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            # Other processes on the same cores slow multi-threaded CPU kernels a lot: record how busy it was.
            "load_average_1min": round(os.getloadavg()[0], 2)}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device if device is not None and device.type == "cuda" else 0)
    return info


# Saliency variants timed side by side with --saliency (the extra compute of each per training step).
SALIENCY_VARIANTS: dict[str, list[str]] = {
    "slots": ["SALIENCY.METHOD", "slots", "SALIENCY.BUDGET", "0.0"],
    "slots_budget_priors": ["SALIENCY.METHOD", "slots", "SALIENCY.BUDGET", "0.15", "SALIENCY.AREA_WEIGHT", "1.0",
                            "SALIENCY.CONTIGUITY_WEIGHT", "1.0"],
    "evidence": ["SALIENCY.METHOD", "evidence", "SALIENCY.BUDGET", "0.15"],
}


def size_configs(size: str, models: list[str], dtype: str = "fp32", on_gpu: bool = False,
                 extra_opts: list[str] | None = None) -> dict[str, CfgNode]:
    """The configs of a size: "encoder" and "X<k>" as asked, training under `dtype` autocast (on a GPU, `on_gpu`,
    with the front-end on the device as a run there has it); `extra_opts` go to the PlayItBack configs."""
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
            extra += extra_opts or []
        configs[name] = load_config(str(REPO / spec["dir"] / path),
                                    ["NUM_GPUS", "1" if on_gpu else "0", *spec["opts"], *extra, *AMP_OPTS[dtype]])
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


def per_sample_flops(model: nn.Module, playbacks: list[Tensor]) -> StepFlops:
    """FLOPs of one sample's forward and training step (fvcore trace of the eval-mode forward of the first sample)."""
    training = model.training
    model.eval()
    with torch.no_grad():
        report = count_flops(model, ([p[:1] for p in playbacks],))
    model.train(training)
    return step_flops(model, report)


def host_sync_check(run: Callable[[], Any], device: torch.device) -> str:
    """"ok" when `run` (called once to warm up, then again) makes no host-device synchronisation on the second call,
    else the first line of the error that ``torch.cuda.set_sync_debug_mode("error")`` raised (any other error, an
    out-of-memory one for instance, propagates)."""
    run()
    torch.cuda.synchronize(device)
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    except RuntimeError as err:
        if "synchroniz" not in str(err).lower() or isinstance(err, torch.OutOfMemoryError):
            raise
        return str(err).strip().splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize(device)
    return "ok"


def sync_checks(cfg: CfgNode, model: nn.Module, playbacks: list[Tensor], device: torch.device) -> dict[str, str]:
    """:func:`host_sync_check` of one eval step and one training step (with its backward) of the library's task, fed
    like the loader feeds it: pinned host waveforms (device front-end) or playbacks, and labels."""
    task = build_task(cfg, model, device, train=True)
    batch = playbacks[0].shape[0]
    data: dict[str, Any] = {"label": torch.randint(0, derived.class_counts(cfg)[0], (batch,)).pin_memory()}
    if task.pyramid is not None:
        data["waveform"] = torch.randn(batch, derived.clip_samples(cfg)).pin_memory()
    else:
        data["playbacks"] = [p.cpu().pin_memory() for p in playbacks]

    def eval_step() -> None:
        model.eval()
        with torch.inference_mode():
            task.step(data, train=False)

    def train_step() -> None:
        model.train()
        task.step(data, train=True)[1]["loss"].backward()

    return {"eval_step": host_sync_check(eval_step, device), "train_step": host_sync_check(train_step, device)}


def timing_figures(prefix: str, forward_times: list[float], train_times: list[float], batch: int, flops: StepFlops,
                   peak: float | None) -> dict[str, Any]:
    """Milliseconds, samples/s, achieved TFLOP/s and (with a peak) MFU of the timed forwards and training steps."""
    forward_s, train_s = statistics.median(forward_times), statistics.median(train_times)
    figures = {
        f"{prefix}forward_ms": round(forward_s * 1e3, 2),
        f"{prefix}forward_backward_ms": round(train_s * 1e3, 2),
        f"{prefix}forward_min_ms": round(min(forward_times) * 1e3, 2),
        f"{prefix}forward_backward_min_ms": round(min(train_times) * 1e3, 2),
        f"{prefix}forward_samples_per_s": round(batch / forward_s, 2),
        f"{prefix}forward_backward_samples_per_s": round(batch / train_s, 2),
        f"{prefix}forward_tflops_per_s": round(flops.forward * batch / forward_s / 1e12, 4),
        f"{prefix}forward_backward_tflops_per_s": round(flops.train_step * batch / train_s / 1e12, 4),
    }
    if peak:
        figures[f"{prefix}forward_mfu"] = round(model_flops_utilisation(flops.forward * batch, forward_s, peak), 4)
        figures[f"{prefix}forward_backward_mfu"] = round(
            model_flops_utilisation(flops.train_step * batch, train_s, peak), 4)
    return figures


def bench_config(cfg: CfgNode, batch: int, device: torch.device, amp_dtype: torch.dtype | None, warmup: int,
                 iters: int, profile_top: int = 0, compile_mode: str | None = None, sync_debug: bool = False,
                 peak: float | None = None) -> dict[str, Any]:
    """Timings, FLOPs and MFU of one config's model; optionally the top operators of one forward+backward
    (`profile_top`), the same timings of ``torch.compile(model, mode=compile_mode)`` ("default" for torch's default
    mode; None: not compiled) and the host-synchronisation checks (`sync_debug`, CUDA).

    Inputs: S playbacks [batch, T0 * (i + 1), F] of seeded noise and random labels.
    """
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    loss_fn = build_loss(cfg, build_label_space(cfg))
    counts = derived.class_counts(cfg)
    playbacks = example_playbacks(cfg, batch, device)
    targets = labels_to_targets(torch.randint(0, counts[0], (batch,), device=device), counts, cfg.DATA.MULTI_LABEL)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    flops = per_sample_flops(model, playbacks)

    def runs(net: Callable[[list[Tensor]], ModelOutput]) -> tuple[Callable[[], None], Callable[[], None]]:
        def forward() -> None:
            model.eval()
            with torch.inference_mode(), autocast:
                net(playbacks)

        def forward_backward() -> None:
            model.train()
            with autocast:
                outputs = net(playbacks)
            loss_fn(outputs.float(), targets)["loss"].backward()

        return forward, forward_backward

    forward, forward_backward = runs(model)
    forward_times = timed_seconds(forward, device, warmup, iters)
    train_times = timed_seconds(forward_backward, device, warmup, iters)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result: dict[str, Any] = {
        "params_M": round(params / 1e6, 3),
        "trainable_params_M": round(trainable / 1e6, 3),
        "input_frames": [p.shape[1] for p in playbacks],
        "forward_gflops_per_sample": round(flops.forward / 1e9, 3),
        "train_step_gflops_per_sample": round(flops.train_step / 1e9, 3),
        **timing_figures("", forward_times, train_times, batch, flops, peak),
    }
    if profile_top:
        result["top_ops_forward_backward"] = top_ops(forward_backward, device, profile_top)
    if compile_mode is not None:
        compiled_forward, compiled_forward_backward = runs(
            torch.compile(model, mode=None if compile_mode == "default" else compile_mode))
        start = time.perf_counter()
        compiled_forward()
        compiled_forward_backward()
        sync(device)
        result["compile_s"] = round(time.perf_counter() - start, 1)
        compiled = timing_figures("compiled_", timed_seconds(compiled_forward, device, warmup, iters),
                                  timed_seconds(compiled_forward_backward, device, warmup, iters), batch, flops, peak)
        result.update(compiled)
        result["compile_speedup_forward"] = round(result["forward_ms"] / compiled["compiled_forward_ms"], 3)
        result["compile_speedup_forward_backward"] = round(
            result["forward_backward_ms"] / compiled["compiled_forward_backward_ms"], 3)
    if sync_debug:
        result["host_sync"] = sync_checks(cfg, model, playbacks, device)
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
                        help=f"sizes to time (default demo small; {' '.join(FULL_SIZES)} with --full)")
    parser.add_argument("--models", nargs="+", default=["encoder", "X1", "X2", "X3"],
                        help="encoder and/or X1 X2 X3")
    parser.add_argument("--full", action="store_true", help="the shipped MViTv2-S and -B configs (slow on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also list the N operators with the most self time in one forward+backward")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model), side by side")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode: default, reduce-overhead, max-autotune, ...")
    parser.add_argument("--sync-debug", action="store_true",
                        help="check one eval and one training step for host synchronisations (CUDA)")
    parser.add_argument("--saliency", nargs="+", default=None, choices=sorted(SALIENCY_VARIANTS),
                        help="time every PlayItBack model once per saliency variant (its extra compute per step)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak TFLOP/s of the device for --dtype (default: data sheet of known GPUs) for the MFU")
    args = parser.parse_args()
    device = bench_device(parser, args.device, args.threads)
    if device.type == "cpu" and args.dtype == "fp16":
        parser.error("fp16 autocast is a GPU feature; use --dtype bf16 on the CPU")
    if args.sync_debug and device.type != "cuda":
        parser.error("--sync-debug checks CUDA synchronisations; it needs --device cuda")
    bad = [m for m in args.models if m != "encoder" and m not in ("X1", "X2", "X3")]
    if bad:
        parser.error(f"--models takes encoder, X1, X2, X3; got {bad}")
    batch = args.batch or (1 if args.full else 8)
    warmup = args.warmup if args.warmup is not None else (1 if args.full else 2)
    iters = args.iters or (2 if args.full else 5)
    sizes = args.sizes or (FULL_SIZES if args.full else ["demo", "small"])
    info = machine(device)
    peak = args.peak_tflops or (peak_tflops(info["gpu"], args.dtype) if device.type == "cuda" else None)
    results = []
    variants = {variant: SALIENCY_VARIANTS[variant] for variant in args.saliency} if args.saliency else {None: []}
    for size in sizes:
        for variant, opts in variants.items():
            models = [m for m in args.models if variant is None or m != "encoder"]
            for name, cfg in size_configs(size, models, args.dtype, device.type == "cuda", opts).items():
                timing = bench_config(cfg, batch, device, DTYPES[args.dtype], warmup, iters, args.profile,
                                      args.compile_mode if args.compile else None, args.sync_debug, peak)
                results.append({"size": size, "model": name, **({"saliency": variant} if variant else {}), **timing})
    print(json.dumps({"bench": "model", "device": str(device), "dtype": args.dtype, "batch": batch,
                      "warmup": warmup, "iters": iters, "peak_tflops": peak, **info, "results": results}))


if __name__ == "__main__":
    main()

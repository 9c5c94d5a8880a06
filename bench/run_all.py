"""Run every benchmark, save the results of this machine and print them as a table (what ``make bench`` runs).

    .venv/bin/python -m bench.run_all                      # CPU
    .venv/bin/python -m bench.run_all --device cuda        # the GPU protocol (below)
    .venv/bin/python -m bench.run_all --only model train   # a subset (the other results of the machine are kept)

Each benchmark runs in its own process and prints one JSON line; they are collected into
``bench/results/<machine>.json`` and ``bench/results/<machine>.md`` (one Markdown table per benchmark), where
<machine> is a short name made from the CPU (or GPU) model and the core count, e.g. ``amd-epyc-2c``. A benchmark that
fails is reported with its error output and the others still run; the exit status is then 1.

The benchmarks and their arguments on a CPU / on a GPU (:data:`BENCHMARKS`):

* ``frontend``: bench/frontend.py; the batched pyramid on the device on a GPU.
* ``data``: bench/data.py (decode and crop in the workers: 0/1/2 workers on a CPU, 0/4/8 at batch 64 on a GPU
  machine).
* ``model``: bench/model.py at the demo and small sizes (CPU, fp32); on a GPU the small and shipped sizes (MViTv2-S
  and -B, X1-X3) at batch 64 under bf16 autocast, with the host-synchronisation check (``--sync-debug``).
* ``compile``: bench/model.py ``--compile``: eager against ``torch.compile`` side by side, the demo encoder and X2
  (CPU, 1 thread), the shipped MViTv2-B encoder and X1 at batch 64, bf16 (GPU; X1 keeps the cold compile of the
  unrolled playbacks within minutes).
* ``train``: bench/train.py, demo configs with 2 workers (CPU); the shipped MViTv2-B encoder pretraining and
  PlayItBackX3 with 8 workers, batch 64, bf16, 20 timed steps (GPU).
* ``storage``: bench/storage.py (files vs shards: decode per worker, the AudioSet loader at 8 and 16 workers, bytes
  per clip), the same on both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CUDA = "cuda"  # replaced by the --device given (e.g. cuda:1)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "frontend": ("frontend.py", [], ["--device", CUDA]),
    "data": ("data.py", [], ["--workers", "0", "4", "8", "--batch", "64", "--clips", "1024"]),
    "model": ("model.py", [], ["--device", CUDA, "--dtype", "bf16", "--sizes", "small", "mvitv2_s", "mvitv2_b",
                               "--batch", "64", "--sync-debug"]),
    "compile": ("model.py", ["--sizes", "demo", "--models", "encoder", "X2", "--threads", "1", "--compile"],
                ["--device", CUDA, "--dtype", "bf16", "--sizes", "mvitv2_b", "--models", "encoder", "X1", "--batch",
                 "64", "--compile"]),
    "train": ("train.py", [], ["--device", CUDA, "--configs", "MViTv2_B", "PlayItBackX3", "--workers", "8", "--batch",
                               "64", "--amp", "bf16", "--iters", "20"]),
    "storage": ("storage.py", [], []),
}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_model() -> str | None:
    """The first GPU's name, or None when torch sees no CUDA device."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_name(device: str) -> str:
    """A short file-name-safe name of the machine: GPU model for a CUDA run, else CPU model and core count."""
    gpu = gpu_model() if device.startswith("cuda") else None
    name = gpu or f"{cpu_model()} {os.cpu_count()}c"
    name = re.sub(r"\((r|tm)\)|cpu|processor|@.*?ghz|nvidia|with.*$", " ", name, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def bench_command(name: str, device: str) -> list[str]:
    """The command line of one benchmark on `device` ("cpu" or a CUDA device)."""
    script, cpu_args, gpu_args = BENCHMARKS[name]
    args = [device if arg == CUDA else arg for arg in gpu_args] if device.startswith("cuda") else cpu_args
    return [sys.executable, "-m", f"bench.{Path(script).stem}", *args]


def run_benchmark(name: str, device: str, timeout_s: float) -> dict[str, Any]:
    """Run one benchmark and return its JSON line (plus the command and wall time), or the error it gave (a run past
    `timeout_s` seconds is stopped and reported as an error)."""
    command = bench_command(name, device)
    shown = " ".join([".venv/bin/python", *command[1:]]).replace(str(REPO) + "/", "")
    start = time.perf_counter()
    try:
        process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"bench": name, "command": shown, "wall_s": round(time.perf_counter() - start, 1),
                "error": f"stopped after {timeout_s:.0f} s (--timeout)"}
    seconds = round(time.perf_counter() - start, 1)
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"bench": name, "command": shown, "wall_s": seconds, "error": process.stderr[-3000:] or "no JSON line"}
    return {**json.loads(lines[-1]), "bench": name, "command": shown, "wall_s": seconds}


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _mfu(row: dict[str, Any], *keys: str) -> str:
    """The MFU figures `keys` of a result row as percentages ("-" when the device's peak was unknown)."""
    values = [f"{100 * row[key]:.1f}%" for key in keys if key in row]
    return " / ".join(values) if values else "-"


def markdown(machine: str, results: dict[str, dict[str, Any]]) -> str:
    """The Markdown report: one table per benchmark."""
    out = [f"# Benchmarks on `{machine}`", ""]
    first = next(iter(results.values()))
    out += [f"torch {first.get('torch', '?')}, {first.get('cpu_count', '?')} CPU cores, "
            f"device {first.get('device', 'cpu')}; measured {time.strftime('%Y-%m-%d')}.", ""]
    for name, result in results.items():
        out += [f"## {name}", "", f"`{result['command']}` ({result['wall_s']} s"
                + (f", load average {result['load_average_1min']})" if "load_average_1min" in result else ")"), ""]
        if "error" in result:
            out += ["```", result["error"].strip(), "```", ""]
            continue
        if name == "frontend":
            out += _table(["path", "clips/s", "vs librosa"], [
                ["librosa (numpy, per clip)", result["librosa_clips_per_s"], "1.00"],
                ["per item (torch, 1 thread)", result["per_item_clips_per_s"], result["per_item_over_librosa"]],
                [f"batched ({result['batch']} clips, {result['batched_threads']} threads, {result['device']})",
                 result["batched_clips_per_s"], result["batched_over_librosa"]],
            ])
            out.append(f"\n{result['playbacks']} playbacks of {result['seconds']} s crops at {result['sample_rate']} Hz.")
        elif name == "data":
            out += _table(["front-end", "workers", "clips/s", "clips/s per worker", "batch shapes"], [
                [r["frontend"], r["workers"], r["clips_per_s"], r["clips_per_s_per_worker"], r["batch_shapes"]]
                for r in result["results"]])
            out.append(f"\n{result['clips']} generated {result['seconds']} s clips, batch {result['batch']}, "
                       f"{result['config']}.")
        elif name == "model":
            out += _table(["size", "model", "params (M)", "trainable (M)", "frames", "GFLOPs fwd / step",
                           "fwd ms", "fwd+bwd ms", "fwd samples/s", "fwd+bwd samples/s", "TFLOP/s fwd / step",
                           "MFU fwd / step", "host sync (eval / train)", "device GB"], [
                [r["size"], r["model"], r["params_M"], r["trainable_params_M"], r["input_frames"],
                 f"{r['forward_gflops_per_sample']} / {r['train_step_gflops_per_sample']}", r["forward_ms"],
                 r["forward_backward_ms"], r["forward_samples_per_s"], r["forward_backward_samples_per_s"],
                 f"{r['forward_tflops_per_s']} / {r['forward_backward_tflops_per_s']}", _mfu(r, "forward_mfu", "forward_backward_mfu"),
                 " / ".join(r["host_sync"].values()) if "host_sync" in r else "-",
                 r.get("peak_device_memory_GB", "-")] for r in result["results"]])
            out.append(f"\nbatch {result['batch']}, {result['dtype']}, median of {result['iters']} after "
                       f"{result['warmup']} warm-up, {result['torch_threads']} threads; GFLOPs per sample "
                       f"(2 per multiply-add); MFU over a peak of {result.get('peak_tflops') or '(unknown)'} TFLOP/s.")
        elif name == "compile":
            out += _table(["size", "model", "eager fwd / fwd+bwd ms", "compiled fwd / fwd+bwd ms",
                           "speed-up fwd", "speed-up fwd+bwd", "compile s"], [
                [r["size"], r["model"], f"{r['forward_ms']} / {r['forward_backward_ms']}",
                 f"{r['compiled_forward_ms']} / {r['compiled_forward_backward_ms']}", r["compile_speedup_forward"],
                 r["compile_speedup_forward_backward"], r["compile_s"]] for r in result["results"]])
            out.append(f"\nbatch {result['batch']}, {result['dtype']}, torch.compile default mode, median of "
                       f"{result['iters']} after {result['warmup']} warm-up, {result['torch_threads']} threads; "
                       "compile s: the first compiled eval forward and training step.")
        elif name == "train":
            out += _table(["model", "workers", "front-end", "autocast", "loader samples/s", "pre-loaded samples/s",
                           "loader / pre-loaded", "data wait", "step ms (loader / pre-loaded)", "MFU (loader)",
                           "peak RSS GB (loader / pre-loaded)", "device GB"], [
                [r["model"], r["workers"], r["frontend"], r["autocast"], r["loader_samples_per_s"],
                 r["preloaded_samples_per_s"], r["loader_over_preloaded"], f"{100 * r['data_wait_fraction']:.1f}%",
                 f"{r['loader_step_ms']} / {r['preloaded_step_ms']}", _mfu(r, "loader_mfu"),
                 f"{r['loader_peak_rss_total_GB']} / {r['preloaded_peak_rss_total_GB']}",
                 r.get("peak_device_memory_GB", "-")] for r in result["results"]])
            out.append(f"\nbatch {result['results'][0]['batch']}, {result['iters']} iterations after "
                       f"{result['warmup']} warm-up; target loader / pre-loaded >= 0.8; peak RSS of the main "
                       f"process {result['peak_rss_main_GB']} GB.")
        elif name == "storage":
            size = result["generated_bytes_per_clip"]
            real = result.get("real_bytes_per_clip") or {}
            out += ["decode: one process, one thread, each clip read whole (best of the passes)", ""]
            out += _table(["storage", "clips/s", "clips per CPU-s (per core)", "CPU ms per clip", "KB per clip",
                           "KB per real clip"], [
                [r["storage"], r["clips_per_s"], r["clips_per_cpu_s"], r["ms_per_clip"],
                 round(size[r["storage"]] / 1e3, 1), _real_size(real, r["storage"])] for r in result["decode"]])
            out += ["", f"loader: {result['config']}, {result['draws']} balanced draws, batch {result['batch']}, "
                    f"workers decode and crop only, on {result['cpu_count']} cores", ""]
            out += _table(["storage", "workers", "clips/s", "clips/s per core", "clips per CPU-s (main + workers)"], [
                [r["storage"], r["workers"], r["clips_per_s"], r["clips_per_s_per_core"], r["clips_per_cpu_s"]]
                for r in result["loader"]])
            packing = ", ".join(f"{k} {v['clips_per_s']} clips/s" for k, v in result["packing"].items())
            out.append(f"\n{result['clips']} generated {result['seconds']} s clips at {result['sample_rate']} Hz; "
                       f"packing (1 process): {packing}; load average {result['load_average_before']} before the run."
                       + (f" Real clips: the {real['clips']} of ../shared/data/audio encoded the same ways." if real
                          else ""))
        out.append("")
    return "\n".join(out)


def _real_size(real: dict[str, Any], storage: str) -> Any:
    """KB per real clip of a storage ("-" without real clips): pcm16 is the size of 16-bit WAV samples."""
    fmt = {"wav": "wav", "pcm16": "wav", "flac": "flac", "mp3": "mp3"}[storage.split()[-1]]
    return round(real[fmt] / 1e3, 1) if fmt in real else "-"


def main() -> int:
    """Run the benchmarks, write bench/results/<machine>.{json,md}, print the table; 1 when any failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS),
                        help="benchmarks to run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one benchmark may run")
    args = parser.parse_args()
    machine = machine_name(args.device)
    saved = args.out / f"{machine}.json"
    # With --only, the other benchmarks' earlier results of this machine are kept (in the usual order).
    earlier = {k: v for k, v in json.loads(saved.read_text()).items() if k in BENCHMARKS} if saved.is_file() else {}
    fresh = {}
    for name in args.only:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        fresh[name] = run_benchmark(name, args.device, args.timeout)
    results = {name: fresh.get(name, earlier.get(name)) for name in BENCHMARKS if name in fresh or name in earlier}
    args.out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"machine": machine, **results}, indent=1) + "\n")
    table = markdown(machine, results)
    (args.out / f"{machine}.md").write_text(table)
    print(table)
    return 1 if any("error" in result for result in fresh.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark, save the results of this machine and print them as a table (what ``make bench`` runs).

    .venv/bin/python bench/run_all.py                      # CPU
    .venv/bin/python bench/run_all.py --device cuda        # the GPU variants (model under bf16 autocast)
    .venv/bin/python bench/run_all.py --only model train   # a subset

Each benchmark (bench/frontend.py, data.py, model.py, train.py) runs in its own process and prints one JSON line;
they are collected into ``bench/results/<machine>.json`` and ``bench/results/<machine>.md`` (one Markdown table per
benchmark), where <machine> is a short name made from the CPU (or GPU) model and the core count, e.g.
``amd-epyc-2c``. A benchmark that fails is reported with its error output and the others still run; the exit status
is then 1.
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
BENCHMARKS = ("frontend", "data", "model", "train")


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
    """The command line of one benchmark."""
    command = [sys.executable, str(REPO / "bench" / f"{name}.py")]
    if device.startswith("cuda"):
        command += ["--device", device]
        if name == "model":
            command += ["--dtype", "bf16"]
    return command


def run_benchmark(name: str, device: str) -> dict[str, Any]:
    """Run one benchmark and return its JSON line (plus the command and wall time), or the error it gave."""
    command = bench_command(name, device)
    start = time.perf_counter()
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    shown = " ".join([".venv/bin/python", *command[1:]]).replace(str(REPO) + "/", "")
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"bench": name, "command": shown, "wall_s": seconds, "error": process.stderr[-3000:] or "no JSON line"}
    return {**json.loads(lines[-1]), "bench": name, "command": shown, "wall_s": seconds}


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


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
            out += _table(["size", "model", "params (M)", "trainable (M)", "frames", "forward ms", "fwd+bwd ms",
                           "fwd samples/s", "fwd+bwd samples/s", "min fwd / fwd+bwd ms"], [
                [r["size"], r["model"], r["params_M"], r["trainable_params_M"], r["input_frames"], r["forward_ms"],
                 r["forward_backward_ms"], r["forward_samples_per_s"], r["forward_backward_samples_per_s"],
                 f"{r['forward_min_ms']} / {r['forward_backward_min_ms']}"] for r in result["results"]])
            out.append(f"\nbatch {result['batch']}, {result['dtype']}, median of {result['iters']} after "
                       f"{result['warmup']} warm-up, {result['torch_threads']} threads.")
        elif name == "train":
            out += _table(["model", "workers", "front-end", "loader samples/s", "pre-loaded samples/s",
                           "loader / pre-loaded", "data wait", "step ms (loader / pre-loaded)",
                           "peak RSS GB (loader / pre-loaded)"], [
                [r["model"], r["workers"], r["frontend"], r["loader_samples_per_s"], r["preloaded_samples_per_s"],
                 r["loader_over_preloaded"], f"{100 * r['data_wait_fraction']:.1f}%",
                 f"{r['loader_step_ms']} / {r['preloaded_step_ms']}",
                 f"{r['loader_peak_rss_total_GB']} / {r['preloaded_peak_rss_total_GB']}"] for r in result["results"]])
            out.append(f"\nbatch {result['results'][0]['batch']}, {result['iters']} iterations after "
                       f"{result['warmup']} warm-up; target loader / pre-loaded >= 0.8; peak RSS of the main "
                       f"process {result['peak_rss_main_GB']} GB.")
        out.append("")
    return "\n".join(out)


def main() -> int:
    """Run the benchmarks, write bench/results/<machine>.{json,md}, print the table; 1 when any failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="benchmarks to run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results")
    args = parser.parse_args()
    machine = machine_name(args.device)
    results = {}
    for name in args.only:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_benchmark(name, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{machine}.json").write_text(json.dumps({"machine": machine, **results}, indent=1) + "\n")
    table = markdown(machine, results)
    (args.out / f"{machine}.md").write_text(table)
    print(table)
    return 1 if any("error" in result for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Data-loading throughput: clips/s of the project's DataLoader with 0, 1 and 2 workers, two front-end placements.

    .venv/bin/python -m bench.data                    # generated 5 s clips at 16 kHz (VGG-Sound's crop), CPU
    .venv/bin/python -m bench.data --workers 0 2 --clips 256

Prints one JSON line. The data are generated with ``playitback.synthetic.demo.make_demo_dataset`` into a temporary folder
(16-bit PCM WAV, 5 s at 16 kHz, the length of a VGG-Sound crop) and read through the library's own pieces
(``build_dataset`` and ``build_loader`` of configs/VGG-Sound/PlayItBackX2.yaml, so the crop, T0 = 400 and the three
playbacks are VGG-Sound's). Two placements of the log-mel front-end:

* ``device``: DATA.FRONTEND device, the workers only decode and crop (waveforms [B, N] leave the loader);
* ``workers``: DATA.FRONTEND workers, each worker also renders the playback pyramid of every clip.

The first batch of each run is not timed (worker start-up); each figure is clips per second over the rest of one
pass over ``--clips`` clips, and per worker (with 0 workers the main process does the work, counted as one).
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from fvcore.common.config import CfgNode

from bench.model import machine
from playitback.config import load_config
from playitback.data.build import build_dataset, build_loader
from playitback.synthetic.demo import make_demo_dataset

REPO = Path(__file__).resolve().parents[1]

CONFIG = REPO / "configs" / "VGG-Sound" / "PlayItBackX2.yaml"


def time_one_pass(cfg: CfgNode) -> dict[str, Any]:
    """One pass of a config's training loader; the first batch (worker start-up) is not timed.

    Returns clips_timed, seconds (wall, after the first batch), cpu_s (CPU time of the main process and the workers
    over the whole pass, first batch included, so per clip it is the full cost) and the first batch.
    """
    dataset = build_dataset(cfg, "train")
    loader = build_loader(cfg, dataset, "train")
    clips = 0
    cpu_start = _cpu_seconds()
    iterator = iter(loader)
    first = next(iterator)
    start = time.perf_counter()
    for item in iterator:
        clips += item["label"].shape[0]
    seconds = time.perf_counter() - start
    del iterator  # joins the workers, so that their CPU time is counted
    return {"clips_timed": clips, "seconds": seconds, "cpu_s": _cpu_seconds() - cpu_start,
            "clips_total": clips + first["label"].shape[0], "first": first}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its joined children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def clips_per_second(data_root: Path, frontend: str, workers: int, batch: int) -> dict[str, Any]:
    """One pass of the training loader over the generated clips; the first batch (worker start-up) is not timed."""
    cfg = load_config(str(CONFIG), [
        "NUM_GPUS", "0", "VGGSOUND.AUDIO_DATA_DIR", str(data_root / "audio"),
        "VGGSOUND.ANNOTATIONS_DIR", str(data_root / "annotations"), "MODEL.NUM_CLASSES", "8",
        "DATA.FRONTEND", frontend, "DATA_LOADER.NUM_WORKERS", str(workers), "DATA_LOADER.PIN_MEMORY", "False",
        "TRAIN.BATCH_SIZE", str(batch),
    ])
    timed = time_one_pass(cfg)
    rate = timed["clips_timed"] / timed["seconds"]
    first = timed["first"]
    output = "playbacks" if "playbacks" in first else "waveform"
    shapes = [list(p.shape) for p in first["playbacks"]] if output == "playbacks" else [list(first["waveform"].shape)]
    return {"frontend": frontend, "workers": workers, "clips_timed": timed["clips_timed"],
            "clips_per_s": round(rate, 1), "clips_per_s_per_worker": round(rate / max(workers, 1), 1), "batch_shapes": shapes}


def main() -> None:
    """Generate the clips, time every (front-end placement, worker count) and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=192, help="generated training clips (one pass is timed)")
    parser.add_argument("--batch", type=int, default=16, help="clips per batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to time")
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length in seconds")
    args = parser.parse_args()
    if args.clips < 2 * args.batch:
        parser.error(f"--clips ({args.clips}) must be at least two batches ({2 * args.batch}): the first is not timed")
    num_classes = 8
    results = []
    with tempfile.TemporaryDirectory(prefix="playitback_bench_data_") as tmp:
        root = Path(tmp)
        make_demo_dataset(root, num_classes=num_classes, train_per_class=-(-args.clips // num_classes),
                          test_per_class=1, clip_secs=args.seconds, seed=0)
        for frontend in ("device", "workers"):
            for workers in args.workers:
                results.append(clips_per_second(root, frontend, workers, args.batch))
    by_key = {(r["frontend"], r["workers"]): r["clips_per_s"] for r in results}
    print(json.dumps({
        "bench": "data", "clips": -(-args.clips // num_classes) * num_classes, "batch": args.batch,
        "seconds": args.seconds, "sample_rate": 16000, "config": str(CONFIG.relative_to(REPO)), **machine(),
        "main_process_torch_threads": torch.get_num_threads(), "results": results,
        "pyramid_cost_ratio_0_workers": round(by_key[("device", 0)] / by_key[("workers", 0)], 2)
        if ("device", 0) in by_key and ("workers", 0) in by_key else None,
    }))


if __name__ == "__main__":
    main()

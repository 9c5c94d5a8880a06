"""Front-end throughput: clips/s of the playback pyramid, librosa reference vs the project's torch paths.

    .venv/bin/python -m bench.frontend                 # CPU: librosa, per-item (1 thread), batched (all threads)
    .venv/bin/python -m bench.frontend --device cuda   # the batched path on the GPU

Prints one JSON line. Three paths render the same pyramid (``--playbacks`` log-mel spectrograms of
``--seconds`` crops):

* ``librosa``: ``bench.librosa_reference`` one clip at a time (numpy; the mel matrix is cached).
* ``per_item``: ``playback_pyramid`` one clip at a time with one torch thread, as in a DataLoader worker.
* ``batched``: ``PlaybackPyramid`` on batches of ``--batch`` clips with every thread (or on ``--device``).

The machine may be shared, so the three paths are timed in interleaved rounds and the best round of each is reported
(the least disturbed one); ``rounds`` sets how many.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from bench.librosa_reference import playback_pyramid_reference
from playitback.data.spectrogram import PlaybackPyramid, playback_pyramid


def main() -> None:
    """Parse the command line, time the three paths and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="clips per round")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the batched path")
    parser.add_argument("--playbacks", type=int, default=3, help="playbacks S of the pyramid")
    parser.add_argument("--seconds", type=float, default=5.0, help="crop length in seconds")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--device", default="cpu", help="device of the batched path (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the best is reported)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but torch.cuda.is_available() is False")
    num_samples = round(args.seconds * args.sample_rate)
    rng = np.random.default_rng(0)
    # Speed does not depend on the content, so seeded noise stands in for audio.
    waves = (0.1 * rng.standard_normal((args.clips, num_samples))).astype(np.float32)
    waves_torch = torch.from_numpy(waves)
    threads = torch.get_num_threads()
    pyramid = PlaybackPyramid(args.sample_rate, args.playbacks)

    def run_librosa() -> None:
        for y in waves:
            playback_pyramid_reference(y, args.sample_rate, args.playbacks)

    def run_per_item() -> None:
        torch.set_num_threads(1)
        try:
            for y in waves_torch:
                playback_pyramid(y, args.sample_rate, args.playbacks)
        finally:
            torch.set_num_threads(threads)

    on_device = waves_torch.to(device)

    def run_batched() -> None:
        for batch in on_device.split(args.batch):
            pyramid(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    paths: dict[str, Callable[[], None]] = {"librosa": run_librosa, "per_item": run_per_item, "batched": run_batched}
    for run in paths.values():  # warm-up: caches, allocator, lazy initialisation
        run()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, run in paths.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    rate = {name: args.clips / min(runs) for name, runs in times.items()}
    print(json.dumps({
        "clips": args.clips,
        "batch": args.batch,
        "playbacks": args.playbacks,
        "seconds": args.seconds,
        "sample_rate": args.sample_rate,
        "device": str(device),
        "librosa_clips_per_s": round(rate["librosa"], 1),
        "per_item_clips_per_s": round(rate["per_item"], 1),
        "batched_clips_per_s": round(rate["batched"], 1),
        "batched_over_librosa": round(rate["batched"] / rate["librosa"], 2),
        "per_item_over_librosa": round(rate["per_item"] / rate["librosa"], 2),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "batched_threads": threads,
    }))


if __name__ == "__main__":
    main()

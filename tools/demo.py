#!/usr/bin/env python
"""The whole PlayItBack recipe on a small synthetic dataset, on the CPU, in minutes (`make demo`).

Steps, each a fresh `tools/run_net.py` process exactly as a user would type it:
  1. make the demo data (tools/make_demo_data.py) unless it is there;
  2. stage 1: pretrain the tiny MViTv2 encoder (configs/Demo/MViT_pretrain.yaml);
  3. stage 2: PlayItBack X2 on the frozen encoder (configs/Demo/PlayItBackX2.yaml);
  4. the baseline: the encoder alone trained on from the same checkpoint for the same number of epochs;
  5. test both from their saved checkpoints in fresh processes (PlayItBack with TEST.SAVE_SEGMENTS True);
  6. figures of test clips: spectrogram, replayed segments of each playback, the true event.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> None:
    command = [sys.executable, str(REPO / "tools" / "run_net.py"), *args]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def final_metrics(output_dir: Path, split: str) -> dict:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line.get("split") == split][-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "demo_data")
    parser.add_argument("--runs", type=Path, default=REPO / "demo_runs")
    parser.add_argument("--figs", type=Path, default=REPO / "figs")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6, help="stage-2 epochs (PlayItBack and the baseline)")
    parser.add_argument("--num-figures", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    data, runs = args.data.resolve(), args.runs.resolve()
    if not (data / "annotations" / "train.csv").is_file():
        subprocess.run([sys.executable, str(REPO / "tools" / "make_demo_data.py"), "--out", str(data),
                        "--train-per-class", "96"], check=True)
    common = ["VGGSOUND.AUDIO_DATA_DIR", str(data / "audio"), "VGGSOUND.ANNOTATIONS_DIR", str(data / "annotations")]
    encoder_dir, playitback_dir, baseline_dir = runs / "encoder", runs / "playitback", runs / "encoder_only"
    encoder_ckpt = encoder_dir / "checkpoints" / "checkpoint_best.pyth"

    run(["--cfg", "configs/Demo/MViT_pretrain.yaml", *common, "OUTPUT_DIR", str(encoder_dir),
         "SOLVER.MAX_EPOCH", str(args.pretrain_epochs)])
    stage2 = ["TRAIN.CHECKPOINT_FILE_PATH", str(encoder_ckpt), "SOLVER.MAX_EPOCH", str(args.epochs)]
    run(["--cfg", "configs/Demo/PlayItBackX2.yaml", *common, *stage2, "OUTPUT_DIR", str(playitback_dir)])
    run(["--cfg", "configs/Demo/MViT_pretrain.yaml", *common, *stage2, "TRAIN.CHECKPOINT_EPOCH_RESET", "True",
         "OUTPUT_DIR", str(baseline_dir)])
    test = ["TRAIN.ENABLE", "False", "TEST.ENABLE", "True", "TEST.CHECKPOINT_SELECT", "best"]
    run(["--cfg", "configs/Demo/PlayItBackX2.yaml", *common, *test, "TEST.SAVE_SEGMENTS", "True",
         "OUTPUT_DIR", str(playitback_dir)])
    run(["--cfg", "configs/Demo/MViT_pretrain.yaml", *common, *test, "OUTPUT_DIR", str(baseline_dir)])

    plotted = subprocess.run(
        [sys.executable, str(REPO / "tools" / "plot_segments.py"), "--cfg", "configs/Demo/PlayItBackX2.yaml",
         "--checkpoint", str(playitback_dir / "checkpoints" / "checkpoint_best.pyth"),
         "--events", str(data / "annotations" / "events.csv"), "--out", str(args.figs),
         "--num-clips", str(args.num_figures), *common],
        check=True, cwd=REPO, capture_output=True, text=True,
    )
    figures = plotted.stdout.split()
    pib = final_metrics(playitback_dir, "test_final")
    base = final_metrics(baseline_dir, "test_final")
    num_classes = sum(1 for _ in open(data / "annotations" / "classes.txt"))
    with open(data / "annotations" / "test.csv") as handle:
        num_test = sum(1 for _ in csv.DictReader(handle))
    print("\n== playitback demo ==")
    print(f"test clips: {num_test}, classes: {num_classes} (chance {100 / num_classes:.1f}%)")
    print(f"PlayItBack X2 (frozen encoder)  test top-1: {pib['top1_acc']:.1f}%   ({playitback_dir})")
    print(f"encoder only, same budget       test top-1: {base['top1_acc']:.1f}%   ({baseline_dir})")
    print(f"replayed segments: {playitback_dir / 'scores' / 'segments.jsonl'}")
    print("figures: " + ", ".join(figures))
    print(f"total time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

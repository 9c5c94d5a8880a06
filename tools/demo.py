#!/usr/bin/env python
"""The whole PlayItBack recipe on a small synthetic dataset, on the CPU, in minutes (`make demo`), with its controls
and several seeds when asked (`make demo SEEDS=3`, `tools/demo.py --seeds 3 --controls`).

Per seed, each step a fresh `tools/run_net.py` process exactly as a user would type it:
  1. make the demo data (tools/make_demo_data.py) unless it is there;
  2. stage 1: pretrain the tiny MViTv2 encoder (configs/Demo/MViT_pretrain.yaml, RNG_SEED = seed);
  3. stage 2: PlayItBack X2 from that encoder (configs/Demo/PlayItBackX2.yaml);
  4. the baseline: the encoder alone trained on from the same checkpoint for the same number of epochs;
  5. with --controls, PlayItBack again with MODEL.REPLAY events (the oracle: the true event), random (a span of the
     same length at a random place) and none (no replay);
  6. test every run from its saved checkpoint in a fresh process, with the replayed segments of PlayItBack runs, and
     score them against the true events (replayed-time precision and its chance level, playitback.localisation).
Then figures of test clips for the first seed, and OUTPUT `<runs>/summary.json`:
  {"seeds": [...], "playitback_top1": [...], "encoder_top1": [...], "replay_precision": [...],
   "chance_precision": [...], "controls": {"events": {"top1": [...], "replay_precision": [...], ...}, ...}}
(precision of the last replayed playback on the test set).
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from playitback.data.events import load_event_spans
from playitback.localisation import evaluate_segments, read_segments

REPO = Path(__file__).resolve().parents[1]
CONTROLS = ("events", "random", "none")


def run(args: list[str]) -> None:
    command = [sys.executable, str(REPO / "tools" / "run_net.py"), *args]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def final_metrics(output_dir: Path, split: str) -> dict:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line.get("split") == split][-1]


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}"


def run_seed(seed: int, args: argparse.Namespace, common: list[str], events_csv: Path) -> dict:
    """Stage 1, stage 2, the baseline (and the controls) of one seed, each tested; their figures."""
    runs = args.runs.resolve() / f"seed{seed}"
    seeded = [*common, "RNG_SEED", str(seed)]
    encoder_dir = runs / "encoder"
    run(["--cfg", "configs/Demo/MViT_pretrain.yaml", *seeded, "OUTPUT_DIR", str(encoder_dir),
         "SOLVER.MAX_EPOCH", str(args.pretrain_epochs)])
    # The demo validates on its test list, so checkpoints are taken at the last epoch, never selected on it.
    encoder_checkpoint = encoder_dir / "checkpoints" / f"checkpoint_epoch_{args.pretrain_epochs:05d}.pyth"
    stage2 = [*seeded, "TRAIN.CHECKPOINT_FILE_PATH", str(encoder_checkpoint), "SOLVER.MAX_EPOCH", str(args.epochs)]
    test = ["TRAIN.ENABLE", "False", "TEST.ENABLE", "True", "TEST.CHECKPOINT_SELECT", "last"]
    baseline_dir = runs / "encoder_only"
    run(["--cfg", "configs/Demo/MViT_pretrain.yaml", *stage2, "TRAIN.CHECKPOINT_EPOCH_RESET", "True",
         "OUTPUT_DIR", str(baseline_dir)])
    run(["--cfg", "configs/Demo/MViT_pretrain.yaml", *seeded, *test, "OUTPUT_DIR", str(baseline_dir)])
    result = {"encoder_top1": final_metrics(baseline_dir, "test_final")["top1_acc"], "controls": {}}
    events = load_event_spans(events_csv)
    for replay in ("saliency", *(CONTROLS if args.controls else ())):
        out = runs / ("playitback" if replay == "saliency" else f"playitback_{replay}")
        variant = [*stage2, "MODEL.REPLAY", replay, "DATA.EVENTS_FILE", str(events_csv)]
        run(["--cfg", "configs/Demo/PlayItBackX2.yaml", *variant, "OUTPUT_DIR", str(out)])
        run(["--cfg", "configs/Demo/PlayItBackX2.yaml", *seeded, *test, "MODEL.REPLAY", replay,
             "DATA.EVENTS_FILE", str(events_csv), "TEST.SAVE_SEGMENTS", "True", "OUTPUT_DIR", str(out)])
        scores = evaluate_segments(read_segments(out / "scores" / "segments.jsonl"), events)
        (out / "scores" / "localisation.json").write_text(json.dumps(scores, indent=2) + "\n")
        last = scores[max((k for k in scores if k != "all"), key=lambda k: int(k.split("_")[1]))]
        entry = {"top1": final_metrics(out, "test_final")["top1_acc"], "replay_precision": last["precision"],
                 "chance_precision": last["chance_precision"], "replay_recall": last["recall"],
                 "replayed_fraction": last["replayed_fraction"], "output_dir": str(out)}
        if replay == "saliency":
            result.update(playitback=entry)
        else:
            result["controls"][replay] = entry
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "demo_data")
    parser.add_argument("--runs", type=Path, default=REPO / "demo_runs")
    parser.add_argument("--figs", type=Path, default=REPO / "figs")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 (each: stage 1, stage 2, baseline)")
    parser.add_argument("--controls", action="store_true", help="also the oracle, random and no-replay controls")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6, help="stage-2 epochs (PlayItBack, controls, baseline)")
    parser.add_argument("--num-figures", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    data = args.data.resolve()
    if not (data / "annotations" / "train.csv").is_file():
        subprocess.run([sys.executable, str(REPO / "tools" / "make_demo_data.py"), "--out", str(data),
                        "--train-per-class", "96"], check=True)
    common = ["VGGSOUND.AUDIO_DATA_DIR", str(data / "audio"), "VGGSOUND.ANNOTATIONS_DIR", str(data / "annotations")]
    events_csv = data / "annotations" / "events.csv"
    per_seed = [run_seed(seed, args, common, events_csv) for seed in range(args.seeds)]

    first = Path(per_seed[0]["playitback"]["output_dir"])
    plotted = subprocess.run(
        [sys.executable, str(REPO / "tools" / "plot_segments.py"), "--cfg", "configs/Demo/PlayItBackX2.yaml",
         "--checkpoint", str(first / "checkpoints" / f"checkpoint_epoch_{args.epochs:05d}.pyth"),
         "--events", str(events_csv),
         "--out", str(args.figs), "--num-clips", str(args.num_figures), *common],
        check=True, cwd=REPO, capture_output=True, text=True,
    )
    summary = {
        "seeds": list(range(args.seeds)),
        "playitback_top1": [s["playitback"]["top1"] for s in per_seed],
        "encoder_top1": [s["encoder_top1"] for s in per_seed],
        "replay_precision": [s["playitback"]["replay_precision"] for s in per_seed],
        "chance_precision": [s["playitback"]["chance_precision"] for s in per_seed],
        "controls": {name: {key: [s["controls"][name][key] for s in per_seed]
                            for key in ("top1", "replay_precision", "chance_precision")}
                     for name in (CONTROLS if args.controls else ())},
        "runs": per_seed,
    }
    runs = args.runs.resolve()
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    num_classes = sum(1 for _ in open(data / "annotations" / "classes.txt"))
    with open(data / "annotations" / "test.csv") as handle:
        num_test = sum(1 for _ in csv.DictReader(handle))
    print("\n== playitback demo ==")
    print(f"test clips: {num_test}, classes: {num_classes} (chance {100 / num_classes:.1f}%), seeds: {args.seeds}")
    print(f"PlayItBack X2                 test top-1: {mean_std(summary['playitback_top1'])}%")
    print(f"encoder only, same budget     test top-1: {mean_std(summary['encoder_top1'])}%")
    precision = [100 * p for p in summary["replay_precision"]]
    chance = [100 * p for p in summary["chance_precision"]]
    print(f"replayed time inside the event: {mean_std(precision)}% (chance {mean_std(chance)}%)")
    for name, values in summary["controls"].items():
        print(f"control MODEL.REPLAY {name:<8} test top-1: {mean_std(values['top1'])}%")
    print(f"summary: {runs / 'summary.json'}")
    print("figures: " + ", ".join(plotted.stdout.split()))
    print(f"total time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

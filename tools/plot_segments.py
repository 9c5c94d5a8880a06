#!/usr/bin/env python
"""Figures of where a trained PlayItBack model replayed: test clips' spectrograms with the replayed segments of each
playback, the saliency curves, and (when an events CSV is given, as for the demo data) the true event.

Example:
    python tools/plot_segments.py --cfg configs/Demo/PlayItBackX2.yaml --checkpoint demo_runs/playitback/checkpoints/checkpoint_best.pyth \\
        --events demo_data/annotations/events.csv --out figs VGGSOUND.AUDIO_DATA_DIR demo_data/audio VGGSOUND.ANNOTATIONS_DIR demo_data/annotations
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from playitback.config import derived, load_config
from playitback.data.build import build_reader, load_split_records
from playitback.data.dataset import crop_or_pad, crop_start
from playitback.inference import analyse_crops, load_inference_model
from playitback.visualization import plot_replay


def read_events(path: Path | None) -> dict[str, list[list[float]]]:
    """uid -> true event spans [start_s, stop_s] from an events CSV (uid,event_start_s,event_stop_s)."""
    if path is None:
        return {}
    events: dict[str, list[list[float]]] = {}
    with open(path) as handle:
        for row in csv.DictReader(handle):
            events.setdefault(row["uid"], []).append([float(row["event_start_s"]), float(row["event_stop_s"])])
    return events


def plot_run(cfg_file: str | Path, opts: Sequence[str], checkpoint: str | Path, out_dir: str | Path,
             num_clips: int = 3, events_csv: str | Path | None = None) -> list[Path]:
    """Plot the first test clip of each of the first `num_clips` classes; returns the PNG paths."""
    cfg = load_config(cfg_file, list(opts) + ["NUM_GPUS", "0"])
    model = load_inference_model(cfg, checkpoint, torch.device("cpu"))
    records = load_split_records(cfg, "test")
    reader = build_reader(cfg, "test")
    events = read_events(Path(events_csv) if events_csv else None)
    clip = derived.clip_samples(cfg)
    chosen, seen = [], set()
    for record in records:
        if record.labels[0] not in seen:
            seen.add(record.labels[0])
            chosen.append(record)
        if len(chosen) == num_clips:
            break
    crops, starts, valid = [], [], []
    for record in chosen:
        segment = reader(record)
        start = crop_start(segment.shape[0], clip, "test", 0, 1, None)
        crop, samples = crop_or_pad(segment, start, clip)
        crops.append(torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)))
        starts.append(record.start_s + start / cfg.AUDIO_DATA.SAMPLING_RATE)
        valid.append(samples)
    analyses = analyse_crops(cfg, model, torch.stack(crops), starts, valid_samples=valid)
    paths = []
    for record, analysis in zip(chosen, analyses):
        predicted = int(analysis.probabilities.argmax())
        title = (f"{record.uid}: label {record.label_names[0] if record.label_names else record.labels[0]}, "
                 f"predicted class {predicted} (p={analysis.probabilities[predicted]:.2f})")
        paths.append(plot_replay(analysis.spectrogram, analysis.start_s, analysis.duration_s, analysis.segments,
                                 analysis.saliency, events.get(record.uid, []), title,
                                 Path(out_dir) / f"replay_{record.uid}.png"))
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", default="figs")
    parser.add_argument("--events", default=None, help="CSV uid,event_start_s,event_stop_s of true events")
    parser.add_argument("--num-clips", type=int, default=3)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    for path in plot_run(args.cfg, args.opts, args.checkpoint, args.out, args.num_clips, args.events):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

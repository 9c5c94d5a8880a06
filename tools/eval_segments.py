#!/usr/bin/env python
"""Replayed-time precision, recall and IoU against annotated events, per playback, with the chance level of the same
replayed length (see playitback/localisation.py for the definitions).

Inputs: the `OUTPUT_DIR/scores/segments.jsonl` of a test run with `TEST.SAVE_SEGMENTS True` (one line per clip, view
and playback, with the crop and the replayed segments in seconds) and an events CSV in the `DATA.EVENTS_FILE` format
(`uid,event_start_s,event_stop_s`, seconds from the start of each audio file).

Example:
    python tools/eval_segments.py --segments demo_runs/playitback/scores/segments.jsonl \\
        --events demo_data/annotations/events.csv --json demo_runs/playitback/scores/localisation.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from playitback.data.events import load_event_spans
from playitback.localisation import evaluate_segments, read_segments


def format_table(results: dict[str, dict]) -> str:
    """A Markdown table of the pooled scores."""
    columns = ("precision", "chance_precision", "recall", "chance_recall", "iou", "chance_iou", "replayed_fraction")
    lines = ["| playback | crops | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, scores in results.items():
        lines.append(f"| {name} | {int(scores['crops'])} | " + " | ".join(f"{scores[c]:.3f}" for c in columns) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", required=True, type=Path, help="segments.jsonl of a test run")
    parser.add_argument("--events", required=True, type=Path, help="events CSV (uid,event_start_s,event_stop_s)")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    try:
        segments, events = read_segments(args.segments), load_event_spans(args.events)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = evaluate_segments(segments, events)
    missing = sorted({r["video"] for r in segments} - set(events))
    if missing:
        print(f"note: {len(missing)} clip(s) have no annotated event (e.g. {missing[0]}); their replayed time counts "
              "as outside every event", file=sys.stderr)
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

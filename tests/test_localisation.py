"""Replayed-time localisation scores (playitback.localisation, tools/eval_segments.py) against hand-computed values and
a brute-force average over every shift."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from playitback.localisation import merge_spans, pool_scores, score_crop

REPO = Path(__file__).resolve().parents[1]


def test_merge_spans_clips_sorts_and_joins() -> None:
    assert merge_spans([(3, 4), (0.5, 1), (0.8, 2), (2, 2.5), (5, 5)], low=0.6, high=3.5) == [(0.6, 2.5), (3, 3.5)]


def test_scores_of_one_crop_by_hand() -> None:
    # Crop 10-14 s; replayed 10.5-11.5 and 12-13 (2 s); event 11-12.5 (1.5 s): overlap 0.5 + 0.5 = 1 s.
    scores = score_crop([[10.5, 11.5], [12.0, 13.0]], [[11.0, 12.5]], [10.0, 14.0])
    assert scores.precision == pytest.approx(0.5) and scores.recall == pytest.approx(1 / 1.5)
    assert scores.iou == pytest.approx(1 / 2.5)
    assert scores.chance_precision == pytest.approx(1.5 / 4) and scores.chance_recall == pytest.approx(2 / 4)
    # Event time outside the crop does not count.
    assert score_crop([[0, 1]], [[-5, 0.5]], [0, 2]).recall == pytest.approx(1.0)
    with pytest.raises(ValueError, match="empty"):
        score_crop([], [], [1.0, 1.0])


def brute_force_chance(replayed: list, events: list, crop: tuple[float, float], step: float) -> tuple[float, float]:
    """Mean precision and IoU over every circular shift of the replayed set by a multiple of `step`."""
    low, high = crop
    length = high - low
    precisions, ious = [], []
    for k in range(int(round(length / step))):
        shift = k * step
        moved = []
        for s, e in replayed:
            s, e = s - low + shift, e - low + shift
            # Wrap around the crop.
            for a, b in ((s, min(e, length)), (max(s, length) - length, e - length)):
                if b > a:
                    moved.append((low + a, low + b))
        result = score_crop(moved, events, crop)
        precisions.append(result.precision)
        ious.append(result.iou)
    return float(np.mean(precisions)), float(np.mean(ious))


def test_chance_levels_equal_the_average_over_every_shift() -> None:
    replayed, events, crop = [[0.3, 0.7], [1.2, 1.25]], [[0.5, 1.4]], (0.0, 2.0)
    scores = score_crop(replayed, events, crop, grid_s=0.005)
    precision, iou = brute_force_chance(replayed, events, crop, step=0.005)
    assert scores.chance_precision == pytest.approx(precision, abs=1e-6)
    assert scores.chance_iou == pytest.approx(iou, abs=2e-3)


def test_pooled_scores_are_time_weighted() -> None:
    a = score_crop([[0, 1]], [[0, 1]], [0, 4])  # precision 1, chance 0.25
    b = score_crop([[0, 3]], [[3, 4]], [0, 4])  # precision 0, chance 0.25
    pooled = pool_scores([a, b])
    assert pooled["precision"] == pytest.approx(1 / 4) and pooled["chance_precision"] == pytest.approx(0.25)
    assert pooled["recall"] == pytest.approx(1 / 2) and pooled["iou"] == pytest.approx((1 + 0) / 2)
    assert pooled["replayed_fraction"] == pytest.approx(4 / 8)
    assert math.isnan(pool_scores([score_crop([], [[0, 1]], [0, 2])])["precision"])


def test_eval_segments_tool_writes_the_table_and_json(tmp_path: Path) -> None:
    segments = tmp_path / "segments.jsonl"
    rows = [
        {"video": "a", "view": 0, "playback": 1, "crop": [0.0, 4.0], "segments": [[1.0, 2.0]]},
        {"video": "a", "view": 0, "playback": 2, "crop": [0.0, 4.0], "segments": [[0.0, 1.0]]},
        {"video": "b", "view": 0, "playback": 1, "crop": [0.0, 4.0], "segments": [[3.0, 4.0]]},
    ]
    segments.write_text("".join(json.dumps(r) + "\n" for r in rows))
    events = tmp_path / "events.csv"
    events.write_text("uid,event_start_s,event_stop_s\na,1.0,2.0\nb,2.0,3.0\n")
    out = tmp_path / "loc.json"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "eval_segments.py"), "--segments", str(segments),
                           "--events", str(events), "--json", str(out)], capture_output=True, text=True, check=True)
    assert "| playback_1 | 2 |" in done.stdout
    result = json.loads(out.read_text())
    assert result["playback_1"]["precision"] == pytest.approx(0.5)
    assert result["playback_2"]["precision"] == pytest.approx(0.0)
    assert result["all"]["chance_precision"] == pytest.approx(0.25)
    # A file from an older run (no crop) is refused with the fix named.
    segments.write_text(json.dumps({"video": "a", "playback": 1, "segments": []}) + "\n")
    failed = subprocess.run([sys.executable, str(REPO / "tools" / "eval_segments.py"), "--segments", str(segments),
                             "--events", str(events)], capture_output=True, text=True)
    assert failed.returncode == 2 and "TEST.SAVE_SEGMENTS" in failed.stderr

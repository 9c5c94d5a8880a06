"""How well replayed time matches annotated events: precision, recall and IoU of time, with their chance levels.

The replayed segments of a clip (what ``TEST.SAVE_SEGMENTS`` writes, per view and playback) and its annotated event
spans (a ``DATA.EVENTS_FILE`` CSV) are both sets of time inside the clip's crop. For one crop:

* precision = |replayed ∩ events| / |replayed| (the share of replayed time that is event time);
* recall = |replayed ∩ events| / |events| (the share of event time that was replayed);
* IoU = |replayed ∩ events| / |replayed ∪ events|.

Chance is the expected value of each score when the same replayed set is moved to a uniformly random place: a
circular shift of the crop by a uniform offset (so the replayed length, and the number and lengths of its pieces, stay
the same). Its precision is exactly |events| / |crop| and its recall |replayed| / |crop|; its IoU is averaged over
every shift on a fine grid. Scores over many crops are pooled in time (micro: sums of intersections over sums of
replayed or event time), and IoU is also given as the mean over crops.

Times are seconds from the start of the audio file; only the part of an event inside the crop counts.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CropScores", "evaluate_segments", "merge_spans", "pool_scores", "read_segments", "score_crop"]

Span = tuple[float, float]


def merge_spans(spans: Iterable[Sequence[float]], low: float = -np.inf, high: float = np.inf) -> list[Span]:
    """Clip spans to ``[low, high]``, drop empty ones and merge the overlapping or touching ones, in time order."""
    clipped = sorted((max(float(s), low), min(float(e), high)) for s, e in spans)
    merged: list[Span] = []
    for start, end in clipped:
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(spans: Sequence[Span]) -> float:
    return float(sum(end - start for start, end in spans))


def _intersection(a: Sequence[Span], b: Sequence[Span]) -> float:
    """Length of the intersection of two merged span lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _grid(spans: Sequence[Span], start: float, bins: int, step: float) -> np.ndarray:
    """Fraction of each grid cell [start + k step, start + (k + 1) step) covered by the spans, float64 [bins]."""
    edges = start + step * np.arange(bins + 1)
    cover = np.zeros(bins)
    for s, e in spans:
        cover += np.clip(np.minimum(edges[1:], e) - np.maximum(edges[:-1], s), 0.0, step) / step
    return cover


@dataclass(frozen=True)
class CropScores:
    """Time totals and scores of one crop (seconds; scores in [0, 1], NaN where undefined)."""

    crop_s: float
    replayed_s: float
    event_s: float
    intersection_s: float
    chance_iou: float

    @property
    def precision(self) -> float:
        return self.intersection_s / self.replayed_s if self.replayed_s > 0 else float("nan")

    @property
    def recall(self) -> float:
        return self.intersection_s / self.event_s if self.event_s > 0 else float("nan")

    @property
    def iou(self) -> float:
        union = self.replayed_s + self.event_s - self.intersection_s
        return self.intersection_s / union if union > 0 else float("nan")

    @property
    def chance_precision(self) -> float:
        return self.event_s / self.crop_s if self.replayed_s > 0 else float("nan")

    @property
    def chance_recall(self) -> float:
        return self.replayed_s / self.crop_s if self.event_s > 0 else float("nan")


def score_crop(replayed: Iterable[Sequence[float]], events: Iterable[Sequence[float]], crop: Sequence[float],
               grid_s: float = 0.001) -> CropScores:
    """Scores of the replayed time of one crop against its events (see the module docstring).

    Args:
        replayed: replayed ``[start_s, end_s]`` spans (may overlap).
        events: annotated ``[start_s, end_s]`` spans (may reach outside the crop).
        crop: ``[start_s, end_s]`` of the crop in the file.
        grid_s: resolution of the grid the chance IoU is averaged on.

    Raises:
        ValueError: if the crop is empty.
    """
    low, high = float(crop[0]), float(crop[1])
    if high <= low:
        raise ValueError(f"crop {crop} is empty; a crop is [start_s, end_s] with end_s > start_s")
    replayed_spans, event_spans = merge_spans(replayed, low, high), merge_spans(events, low, high)
    replayed_s, event_s = _length(replayed_spans), _length(event_spans)
    intersection = _intersection(replayed_spans, event_spans)
    chance_iou = float("nan")
    if replayed_s > 0 and event_s > 0:
        bins = max(1, int(round((high - low) / grid_s)))
        step = (high - low) / bins
        r, e = _grid(replayed_spans, low, bins, step), _grid(event_spans, low, bins, step)
        # Overlap after every circular shift of the replayed set, via the FFT (circular cross-correlation).
        overlaps = np.fft.irfft(np.fft.rfft(e) * np.conj(np.fft.rfft(r)), bins) * step
        overlaps = np.clip(overlaps, 0.0, min(replayed_s, event_s))
        chance_iou = float(np.mean(overlaps / (replayed_s + event_s - overlaps)))
    return CropScores(high - low, replayed_s, event_s, intersection, chance_iou)


def pool_scores(crops: Sequence[CropScores]) -> dict[str, float]:
    """Pooled scores over crops: time-weighted (micro) precision and recall with their chance levels, and IoU as the
    mean over the crops where it is defined (with its chance), plus the totals."""
    replayed = sum(c.replayed_s for c in crops)
    events = sum(c.event_s for c in crops)
    inter = sum(c.intersection_s for c in crops)
    defined = [c for c in crops if c.replayed_s > 0 and c.event_s > 0]
    with_replay = [c for c in crops if c.replayed_s > 0]
    with_events = [c for c in crops if c.event_s > 0]
    nan = float("nan")
    return {
        "crops": float(len(crops)),
        "replayed_s": replayed,
        "event_s": events,
        "replayed_fraction": replayed / sum(c.crop_s for c in crops) if crops else nan,
        "precision": inter / replayed if replayed > 0 else nan,
        "chance_precision": (sum(c.event_s / c.crop_s * c.replayed_s for c in with_replay) / replayed
                             if replayed > 0 else nan),
        "recall": inter / events if events > 0 else nan,
        "chance_recall": (sum(c.replayed_s / c.crop_s * c.event_s for c in with_events) / events
                          if events > 0 else nan),
        "iou": float(np.mean([c.iou for c in defined])) if defined else nan,
        "chance_iou": float(np.mean([c.chance_iou for c in defined])) if defined else nan,
    }


def read_segments(path: str | Path) -> list[dict]:
    """The records of a segments.jsonl file (``TEST.SAVE_SEGMENTS``): one per clip, view and playback.

    Raises:
        FileNotFoundError: if the file is absent.
        ValueError: naming the line of a record without a crop or segments (written before crops were recorded).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segments file {path} does not exist; write it with a test run and "
                                "TEST.SAVE_SEGMENTS True (OUTPUT_DIR/scores/segments.jsonl)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        missing = [key for key in ("video", "playback", "crop", "segments") if key not in record]
        if missing:
            raise ValueError(f"{path}:{number} lacks {missing}; rewrite the file with this version's test run "
                             "(TEST.SAVE_SEGMENTS True records each crop)")
        records.append(record)
    return records


def evaluate_segments(segments: Sequence[dict], events: dict[str, list[tuple[float, float]]]) -> dict[str, dict]:
    """Pooled scores (:func:`pool_scores`) per playback ("playback_1", ...) and over all playbacks ("all") of the
    records of :func:`read_segments` against events (uid -> spans, e.g. from ``load_event_spans``)."""
    per_playback: dict[str, list[CropScores]] = defaultdict(list)
    for record in segments:
        scores = score_crop(record["segments"], events.get(record["video"], []), record["crop"])
        per_playback[f"playback_{record['playback']}"].append(scores)
        per_playback["all"].append(scores)
    return {key: pool_scores(value) for key, value in sorted(per_playback.items())}

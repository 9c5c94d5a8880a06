"""Annotated event spans: clip record + crop -> which frames of playback 0 lie inside an event.

With ``DATA.EVENTS_FILE`` every item carries ``event_mask`` (bool [T0]); with ``MODEL.REPLAY events`` PlayItBack
replays those frames instead of the salient ones. That is an oracle: it bounds what a perfect saliency could gain on
data whose events are annotated (the demo's ``annotations/events.csv``, AudioSet's strong labels, ...).

The file is a CSV with a header and one row per event: ``uid`` (the clip's record uid, as in the split's annotation
file), ``event_start_s`` and ``event_stop_s`` (seconds from the start of the audio file). A clip may have several
rows; a clip without rows has no event frames.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from playitback.data.records import ClipRecord

EVENT_COLUMNS = ("uid", "event_start_s", "event_stop_s")


def load_event_spans(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """uid -> [(start_s, stop_s), ...] from an events CSV (see the module docstring).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if a column is missing or a span ends before it starts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"events file {path} does not exist; set DATA.EVENTS_FILE to a CSV with columns "
                                f"{', '.join(EVENT_COLUMNS)}")
    table = pd.read_csv(path, dtype={"uid": str})
    missing = [column for column in EVENT_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"events file {path} lacks the column(s) {missing}; it needs {', '.join(EVENT_COLUMNS)} "
                         f"(found {list(table.columns)})")
    backwards = table[table.event_stop_s < table.event_start_s]
    if len(backwards):
        row = backwards.iloc[0]
        raise ValueError(f"events file {path}: the event of {row.uid} stops ({row.event_stop_s} s) before it starts "
                         f"({row.event_start_s} s)")
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for uid, start, stop in zip(table.uid, table.event_start_s, table.event_stop_s):
        spans[uid].append((float(start), float(stop)))
    return dict(spans)


def event_frame_mask(spans: list[tuple[float, float]], crop_start_s: float, clip_secs: float,
                     num_frames: int) -> Tensor:
    """Frames of a crop whose centre lies inside an event.

    Args:
        spans: events as (start_s, stop_s), seconds from the start of the audio file.
        crop_start_s: where the crop starts in the file.
        clip_secs: crop length in seconds.
        num_frames: frames of playback 0 over the crop (T0); frame k is centred at k * clip_secs / T0 seconds (the
            STFT is centred: frame k's window is centred on sample k * hop).

    Returns:
        bool [num_frames].
    """
    centres = crop_start_s + torch.arange(num_frames, dtype=torch.float64) * (clip_secs / num_frames)
    mask = torch.zeros(num_frames, dtype=torch.bool)
    for start, stop in spans:
        mask |= (centres >= start) & (centres < stop)
    return mask


class EventFrames:
    """Picklable (for DataLoader workers) map from (clip record, crop start) to its event mask bool [T0]."""

    def __init__(self, spans: dict[str, list[tuple[float, float]]], clip_secs: float, num_frames: int) -> None:
        self.spans = spans
        self.clip_secs = clip_secs
        self.num_frames = num_frames

    def __call__(self, record: ClipRecord, crop_start_s: float) -> Tensor:
        return event_frame_mask(self.spans.get(record.uid, []), crop_start_s, self.clip_secs, self.num_frames)

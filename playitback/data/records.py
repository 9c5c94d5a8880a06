"""Clip records: the one format every annotation reader produces and every dataset consumes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClipRecord:
    """One annotated clip (or, for EPIC-KITCHENS, one action inside an untrimmed recording).

    Attributes:
        uid: Unique id. The file stem for VGG-Sound and AudioSet (``"glLQrEijrKg_000300"``), the ``narration_id``
            for EPIC-KITCHENS (``"P01_11_0"``).
        source: Audio location relative to the audio root, without extension: ``"<class name>/<stem>"`` for
            VGG-Sound, ``"<stem>"`` for AudioSet, the ``video_id`` (the HDF5 key) for EPIC-KITCHENS.
        labels: Class ids, 0-based as the annotation file gives them: ``(class_id,)`` for single-label data, every
            positive id for multi-label data, ``(verb_class, noun_class)`` for EPIC-KITCHENS.
        start_s: Segment start inside the audio file, in seconds.
        stop_s: Segment end in seconds; ``None`` means the end of the file.
        label_names: Human-readable names matching ``labels`` position by position (may be empty).
    """

    uid: str
    source: str
    labels: tuple[int, ...]
    start_s: float = 0.0
    stop_s: float | None = None
    label_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.start_s < 0:
            raise ValueError(f"clip {self.uid!r}: start_s={self.start_s} is negative; segments start at 0 s or later")
        if self.stop_s is not None and self.stop_s <= self.start_s:
            raise ValueError(
                f"clip {self.uid!r}: stop_s={self.stop_s} is not after start_s={self.start_s}; "
                "give a stop time after the start, or None for 'to the end of the file'"
            )
        if self.label_names and len(self.label_names) != len(self.labels):
            raise ValueError(
                f"clip {self.uid!r}: {len(self.labels)} labels but {len(self.label_names)} label names; "
                "give one name per label or none"
            )

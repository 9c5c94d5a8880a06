"""What a run writes so that others can reproduce its numbers: the clips of every split, the AP of every class, and
how many of the listed evaluation clips it could read.

The first reason a published AudioSet mAP cannot be reproduced is a different set of clips: every copy of AudioSet
misses some (videos are taken down), and mAP moves with them. A run therefore records the exact clip ids it trained,
validated and tested on (``OUTPUT_DIR/clips/<split>.txt``), the per-class AP behind its mAP
(``OUTPUT_DIR/scores/per_class.csv``) and, in its test record, how many of the listed test clips were present.
"""
from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from playitback.data.records import ClipRecord
from playitback.metrics import ArrayLike, per_class_average_precision

logger = logging.getLogger(__name__)

CLIPS_DIR = "clips"
PER_CLASS_FILE = "per_class.csv"


def write_clip_ids(output_dir: str | Path, split: str, records: Sequence[ClipRecord]) -> Path:
    """``OUTPUT_DIR/clips/<split>.txt``: the uid of every clip of the split, one per line, in the dataset's order."""
    path = Path(output_dir) / CLIPS_DIR / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{record.uid}\n" for record in records), encoding="utf-8")
    return path


def audio_coverage(listed: int, present: int, test_list: str) -> dict[str, int]:
    """How many of the listed test clips have their audio (the dataset's check at start,
    :func:`playitback.data.build.present_records`), logged; returns clips_listed and clips_present (for the
    test_final record).

    Args:
        listed: The clips of the test list.
        present: Those whose audio exists (a file, or a pack or HDF5 file holding the clip).
        test_list: The list's name, for the log.
    """
    logger.info("test list %s: %d of its %d clips have their audio (%.2f%%)", test_list, present, listed,
                100.0 * present / max(listed, 1))
    if present < listed:
        logger.warning("%d clip(s) of the test list are missing: metrics over another set of clips are not "
                       "comparable with those over the whole list; publish %s/test.txt with them",
                       listed - present, CLIPS_DIR)
    return {"clips_listed": listed, "clips_present": present}


def task_class_names(records: Sequence[ClipRecord], class_counts: Sequence[int], multitask: bool) -> list[list[str]]:
    """Names of the classes of every head as the records give them (``label_names``); a class that no record names
    keeps its id as name. Multi-task records (EPIC-KITCHENS verb, noun) name one class of each head."""
    names = [[str(i) for i in range(count)] for count in class_counts]
    for record in records:
        for position, (label, name) in enumerate(zip(record.labels, record.label_names)):
            names[position if multitask else 0][label] = name
    return names


def write_per_class_csv(path: str | Path, scores: ArrayLike, labels: ArrayLike, class_counts: Sequence[int],
                        multi_label: bool, names: Sequence[Sequence[str]], task_names: Sequence[str] = ()) -> Path:
    """The per-class table of a test: class id, name, positives and AP (percent; empty without positives).

    Args:
        path: The CSV to write.
        scores: Ensembled scores [N, sum(class_counts)].
        labels: As the metrics take them (class ids [N], multi-hot [N, C], or ids per task [N, T]).
        class_counts: Classes per head.
        multi_label: Multi-hot labels.
        names: Class names per head (:func:`task_class_names`).
        task_names: Head names, written as a first column when there are several heads (e.g. verb, noun).
    """
    rows = per_class_average_precision(scores, labels, class_counts, multi_label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    several = len(class_counts) > 1
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow((["task"] if several else []) + ["class_id", "class_name", "positives", "AP"])
        for task, class_id, positives, ap in rows:
            head = [task_names[task] if task < len(task_names) else str(task)] if several else []
            writer.writerow(head + [class_id, names[task][class_id], positives, "" if math.isnan(ap) else f"{ap:.4f}"])
    return path

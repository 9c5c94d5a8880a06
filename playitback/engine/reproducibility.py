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

from playitback.data.labels import LabelSpace
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


def write_per_class_csv(path: str | Path, scores: ArrayLike, labels: ArrayLike, label_space: LabelSpace) -> Path:
    """The per-class table of a test: class id, name, positives and AP (percent; empty without positives), with the
    task as a first column when there are several (e.g. verb, noun).

    Args:
        path: The CSV to write.
        scores: Ensembled scores [N, K].
        labels: As the metrics take them (class ids [N], multi-hot [N, K], or ids per task [N, T]).
        label_space: The tasks, their classes and the class names.
    """
    rows = per_class_average_precision(scores, labels, label_space.class_counts, label_space.multi_label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    several = label_space.num_tasks > 1
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow((["task"] if several else []) + ["class_id", "class_name", "positives", "AP"])
        for task, class_id, positives, ap in rows:
            head = [label_space.task_names[task]] if several else []
            writer.writerow(head + [class_id, label_space.class_names[task][class_id], positives,
                                    "" if math.isnan(ap) else f"{ap:.4f}"])
    return path

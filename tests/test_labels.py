"""The label space: built from the config and the records, validated, and what names the metrics and the outputs."""
from __future__ import annotations

from pathlib import Path

import pytest

from playitback.config import load_config
from playitback.data.build import build_label_space
from playitback.data.labels import LabelSpace
from playitback.data.records import ClipRecord

REPO = Path(__file__).resolve().parents[1]


def test_the_config_gives_tasks_counts_and_multi_label() -> None:
    epic = build_label_space(load_config(REPO / "configs/EPIC-KITCHENS/PlayItBackX1.yaml", ["NUM_GPUS", "0"]))
    assert (epic.class_counts, epic.task_names, epic.multi_label) == ((97, 300), ("verb", "noun"), False)
    assert epic.primary_metric_name == "action_top1_acc" and epic.num_outputs == 397
    audioset = build_label_space(load_config(REPO / "configs/AudioSet/PlayItBackX1.yaml", ["NUM_GPUS", "0"]))
    assert (audioset.class_counts, audioset.multi_label, audioset.primary_metric_name) == ((527,), True, "mAP")
    vggsound = build_label_space(load_config(REPO / "configs/VGG-Sound/PlayItBackX1.yaml", ["NUM_GPUS", "0"]))
    assert (vggsound.class_counts, vggsound.primary_metric_name) == ((309,), "top1_acc")


def test_records_name_the_classes_and_unnamed_ones_keep_their_id() -> None:
    records = [ClipRecord("a", "a", (2,), label_names=("dog",)), ClipRecord("b", "b", (0,), label_names=("cat",))]
    space = LabelSpace((3,)).named_from(records)
    assert space.class_names == (("cat", "1", "dog"),)
    assert space.output_names() == ["cat", "1", "dog"]
    multi = LabelSpace((3,), multi_label=True)
    multi = multi.named_from([ClipRecord("c", "c", (0, 2), label_names=("rain", "wind"))])
    assert multi.class_names == (("rain", "1", "wind"),)
    epic = LabelSpace((2, 2), task_names=("verb", "noun"))
    epic = epic.named_from([ClipRecord("d", "d", (1, 0), label_names=("open", "door"))])
    assert epic.output_names() == ["verb:0", "verb:open", "noun:door", "noun:1"]


@pytest.mark.parametrize("kwargs, message", [
    ({"class_counts": ()}, "at least one task of at least one class"),
    ({"class_counts": (3, 0), "task_names": ("a", "b")}, "at least one task of at least one class"),
    ({"class_counts": (3, 4)}, r"2 task\(s\) \[3, 4\] need as many task names"),
    ({"class_counts": (3, 4), "multi_label": True, "task_names": ("a", "b")}, "multi-label data has one task"),
    ({"class_counts": (2,), "class_names": (("x",),)}, "must name every class"),
])
def test_an_impossible_label_space_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LabelSpace(**kwargs)

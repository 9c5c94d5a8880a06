"""The label space of a dataset: its tasks, the classes of each, whether labels are multi-hot, and the class names.

Built once from the config and the dataset's records (:func:`playitback.data.build.build_label_space`) and passed to
the task, the loss and the metrics, so no consumer infers the dataset from a class count.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from playitback.data.records import ClipRecord


@dataclass(frozen=True)
class LabelSpace:
    """What a model predicts.

    Attributes:
        class_counts: classes per task, e.g. (309,) (VGG-Sound) or (97, 300) (EPIC-KITCHENS verb, noun); the model's
            K = sum(class_counts) outputs are the tasks' blocks in this order.
        multi_label: multi-hot labels (AudioSet): a sigmoid per class instead of a softmax per task.
        task_names: one name per task; metric keys of several tasks are prefixed with them (``verb_top1_acc``).
        class_names: per task, the name of every class (its id as a string where the data names none).
    """

    class_counts: tuple[int, ...]
    multi_label: bool = False
    task_names: tuple[str, ...] = ("class",)
    class_names: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        counts = tuple(int(c) for c in self.class_counts)
        if not counts or min(counts) < 1:
            raise ValueError(f"a label space needs at least one task of at least one class, got {list(counts)}")
        if len(self.task_names) != len(counts):
            raise ValueError(f"{len(counts)} task(s) {list(counts)} need as many task names, got "
                             f"{list(self.task_names)}")
        if self.multi_label and len(counts) != 1:
            raise ValueError(f"multi-label data has one task, got class counts {list(counts)}")
        names = self.class_names or tuple(tuple(str(i) for i in range(count)) for count in counts)
        if [len(n) for n in names] != list(counts):
            raise ValueError(f"class_names must name every class of every task ({list(counts)}), got "
                             f"{[len(n) for n in names]} names")
        object.__setattr__(self, "class_counts", counts)
        object.__setattr__(self, "task_names", tuple(self.task_names))
        object.__setattr__(self, "class_names", tuple(tuple(n) for n in names))

    @property
    def num_outputs(self) -> int:
        """K: the model's outputs over all tasks."""
        return sum(self.class_counts)

    @property
    def num_tasks(self) -> int:
        return len(self.class_counts)

    @property
    def primary_metric_name(self) -> str:
        """The validation metric that selects checkpoint_best (higher is better): the joint top-1 of all tasks
        (EPIC's action), mAP (multi-label) or top-1 accuracy."""
        if self.num_tasks > 1:
            return "action_top1_acc"
        return "mAP" if self.multi_label else "top1_acc"

    def primary_metric(self, metrics: Mapping[str, float]) -> float:
        return metrics[self.primary_metric_name]

    def output_names(self) -> list[str]:
        """The name of each of the K outputs: the class name, as ``task:name`` when there are several tasks."""
        if self.num_tasks == 1:
            return list(self.class_names[0])
        return [f"{task}:{name}" for task, names in zip(self.task_names, self.class_names) for name in names]

    def named_from(self, records: Sequence[ClipRecord]) -> LabelSpace:
        """This label space with the class names the records give (``label_names``); a class no record names keeps
        its current name. Multi-task records name one class of each task."""
        names = [list(task) for task in self.class_names]
        for record in records:
            for position, (label, name) in enumerate(zip(record.labels, record.label_names)):
                names[position if self.num_tasks > 1 else 0][label] = name
        return LabelSpace(self.class_counts, self.multi_label, self.task_names, tuple(tuple(n) for n in names))

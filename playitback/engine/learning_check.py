"""Is the run learning? The training loss against its chance level, checked once per epoch.

A classifier that has learned nothing from its inputs can still learn the class prior; its expected loss is then the
entropy of the prior: ln K for K balanced classes (cross-entropy), the mean binary entropy of the class frequencies
(binary cross-entropy, multi-label), the mean over the heads for several tasks (EPIC verb and noun). The same holds
with MixUp or label smoothing: the best constant prediction is the mean target. A training loss that is still within
a small margin of that level after a few epochs means the model is not learning, and nothing else in the log says so.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from playitback.data.labels import LabelSpace

LIKELY_CAUSES = (
    "a learning rate too high (the loss sits at chance from the start) or too low: SOLVER.BASE_LR, "
    "SOLVER.WARMUP_EPOCHS",
    "labels that do not match the audio: check the annotation lists and classes.txt",
    "inputs far from unit scale: AUDIO_DATA.NORM_MEAN and AUDIO_DATA.NORM_STD from tools/input_stats.py",
    "too little data for an encoder trained from scratch: start from pretrained MViTv2 weights "
    "(TRAIN.CHECKPOINT_FILE_PATH, see the README's 'your own dataset'), or the from-scratch recipe of "
    "configs/Small (full-band frame tokens, AUDIO_DATA.NORM_PER_CLIP, ENCODER.HEAD_POOL max; docs/method.md "
    "section 8)",
    "augmentation too strong for the data: MIXUP.ENABLE, SPEC_AUGMENT.*",
)


def _entropy(probabilities: np.ndarray) -> float:
    p = probabilities[probabilities > 0]
    return float(-(p * np.log(p)).sum())


def chance_loss(labels: Sequence[Sequence[int]], label_space: LabelSpace) -> float:
    """The loss of predicting the class prior of ``labels`` (nats), as playitback.losses.classification_loss averages.

    Args:
        labels: each clip's label ids (ClipRecord.labels): one id, every positive id (multi-label), or one id per task.
        label_space: the classes per task; multi-label: binary cross-entropy over the classes instead of a
            cross-entropy per task.
    """
    class_counts = label_space.class_counts
    if not labels:
        raise ValueError("chance_loss needs the labels of at least one clip")
    if label_space.multi_label:
        frequency = np.zeros(sum(class_counts))
        for ids in labels:
            frequency[list(ids)] += 1
        frequency /= len(labels)
        return float(np.mean([_entropy(np.array([q, 1 - q])) for q in frequency]))
    per_task = []
    for task, count in enumerate(class_counts):
        frequency = np.bincount([ids[task] for ids in labels], minlength=count) / len(labels)
        per_task.append(_entropy(frequency))
    return float(np.mean(per_task))


@dataclass
class NotLearningCheck:
    """Says once when the epoch's training loss is still within ``margin`` (relative) of ``chance`` at or after epoch
    ``after_epochs`` (0 disables the check).

    Call :meth:`update` after every training epoch; it returns the warning the first time the condition holds, else
    None.
    """

    chance: float
    after_epochs: int = 3
    margin: float = 0.05
    fired: bool = False

    def update(self, epoch: int, train_loss: float) -> str | None:
        """epoch: epochs trained so far (1-based); train_loss: that epoch's mean classification loss."""
        if self.fired or self.after_epochs <= 0 or epoch < self.after_epochs:
            return None
        # A non-finite loss has its own error (TRAIN.ON_NONFINITE_LOSS).
        if not math.isfinite(train_loss) or train_loss < self.chance * (1 - self.margin):
            return None
        self.fired = True
        return (f"the model is not learning: after {epoch} epoch(s) the training loss {train_loss:.4f} is within "
                f"{self.margin:.0%} of its chance level {self.chance:.4f} (the loss of always predicting the class "
                f"prior). Likely causes: " + "; ".join(LIKELY_CAUSES) + ". tools/baseline.py shows what a linear model "
                "on clip statistics reaches on this data. (TRAIN.NOT_LEARNING_EPOCHS 0 turns this check off.)")

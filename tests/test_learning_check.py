"""The not-learning warning: chance levels against independent computations, the check's rule, and real runs (it fires
on shuffled labels, it stays silent on the demo)."""
from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss

from engine_utils import make_tiny_dataset, metrics, run_net, run_opts
from playitback.data.annotations import read_annotations, write_records_csv
from playitback.data.labels import LabelSpace
from playitback.engine.learning_check import NotLearningCheck, chance_loss


def test_chance_loss_is_the_loss_of_predicting_the_prior() -> None:
    assert chance_loss([(k,) for k in range(16)] * 3, LabelSpace((16,))) == pytest.approx(math.log(16))
    labels = [0] * 6 + [1] * 3 + [2]
    prior = np.bincount(labels) / len(labels)
    assert chance_loss([(y,) for y in labels], LabelSpace((3,))) == pytest.approx(
        log_loss(labels, np.tile(prior, (len(labels), 1))))
    # Several tasks: the mean over the heads, as the loss averages them.
    verbs, nouns = [0, 1, 1, 1], [2, 2, 0, 1]
    expected = np.mean([log_loss(v, np.tile(np.bincount(v) / 4, (4, 1))) for v in (verbs, nouns)])
    epic = LabelSpace((2, 3), task_names=("verb", "noun"))
    assert chance_loss(list(zip(verbs, nouns)), epic) == pytest.approx(expected)
    # Multi-label: binary cross-entropy of the class frequencies, averaged over classes (class 3 never occurs).
    positives = [(0, 1), (0,), (2,), (0, 2)]
    hot = torch.zeros(4, 4)
    for row, ids in enumerate(positives):
        hot[row, list(ids)] = 1
    frequency = hot.mean(0, keepdim=True).expand(4, -1)
    want = float(F.binary_cross_entropy(frequency, hot))
    assert chance_loss(positives, LabelSpace((4,), multi_label=True)) == pytest.approx(want, rel=1e-6)


def test_check_fires_once_after_the_patience_and_only_near_chance() -> None:
    check = NotLearningCheck(chance=math.log(16), after_epochs=3, margin=0.05)
    assert check.update(1, 2.78) is None and check.update(2, 2.77) is None  # too early
    message = check.update(3, 2.70)  # 2.6% below chance: within the margin
    assert message and "not learning" in message and "2.7000" in message and "2.7726" in message
    assert "SOLVER.BASE_LR" in message and "AUDIO_DATA.NORM_MEAN" in message and "TRAIN.CHECKPOINT_FILE_PATH" in message
    assert check.update(4, 2.77) is None  # once
    learning = NotLearningCheck(chance=math.log(16), after_epochs=3, margin=0.05)
    assert learning.update(3, 2.60) is None and learning.update(5, 2.0) is None  # 6% below chance: learning
    assert learning.update(6, 2.75) is not None  # back at chance later: said then
    assert NotLearningCheck(chance=2.0, after_epochs=0).update(10, 2.0) is None  # off
    assert NotLearningCheck(chance=2.0, after_epochs=1).update(1, math.nan) is None  # NaN has its own error


def _shuffle_labels(data: Path, out: Path) -> Path:
    """A copy of the annotation folder whose training labels are permuted across clips."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("test.csv", "classes.txt"):
        (out / name).write_bytes((data / "annotations" / name).read_bytes())
    records = read_annotations(data / "annotations" / "train.csv", "vggsound")
    labels = [(r.labels, r.label_names) for r in records]
    random.Random(0).shuffle(labels)
    write_records_csv([dataclasses.replace(r, labels=ids, label_names=names) for r, (ids, names) in zip(records, labels)],
                      out / "train.csv")
    return out


def test_a_run_with_shuffled_labels_says_it_is_not_learning(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data")
    annotations = _shuffle_labels(data, tmp_path / "shuffled")
    out = tmp_path / "run"
    opts = run_opts(data, out, epochs=3) + ["VGGSOUND.ANNOTATIONS_DIR", str(annotations), "TRAIN.NOT_LEARNING_EPOCHS",
                                            "2", "TRAIN.EVAL_PERIOD", "3"]
    result = run_net("configs/Demo/MViT_pretrain.yaml", opts)
    [warning] = metrics(out, "warning")
    assert warning["kind"] == "not_learning" and warning["epoch"] == 2
    assert warning["chance_loss"] == pytest.approx(math.log(4))
    assert "the model is not learning" in result.stdout + result.stderr
    assert "the model is not learning" in (out / "stdout.log").read_text()


@pytest.mark.slow
def test_the_demo_encoder_learns_and_stays_silent(tmp_path: Path) -> None:
    """Stage 1 of `make demo` (20 epochs, seed 0): the loss leaves its chance level after a slow start and the check
    (at the recipe's epoch 10) says nothing."""
    from playitback.synthetic.demo import make_demo_dataset

    data = tmp_path / "demo"
    make_demo_dataset(data, seed=0)
    out = tmp_path / "encoder"
    run_net("configs/Demo/MViT_pretrain.yaml", ["VGGSOUND.AUDIO_DATA_DIR", str(data / "audio"),
                                                  "VGGSOUND.ANNOTATIONS_DIR", str(data / "annotations"),
                                                  "SOLVER.MAX_EPOCH", "20", "OUTPUT_DIR", str(out)])
    assert metrics(out, "warning") == []
    losses = [row["loss"] for row in metrics(out, "train_epoch")]
    assert losses[9] < 0.95 * math.log(8) and losses[-1] < 0.8 * math.log(8), losses

"""Metrics against independent references: scikit-learn, scipy, brute force and hand-computed values."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from playitback.data.labels import LabelSpace
from playitback.metrics import (
    ViewEnsemble,
    action_topk,
    classification_metrics,
    d_prime,
    mean_auc,
    mean_average_precision,
    per_class_average_precision,
    topk_accuracy,
)


def test_topk_accuracy_hand_computed() -> None:
    scores = torch.tensor([
        [0.1, 0.9, 0.0, 0.0],   # label 1: rank 0
        [0.5, 0.2, 0.3, 0.0],   # label 2: rank 1
        [0.4, 0.3, 0.2, 0.1],   # label 3: rank 3
        [0.5, 0.5, 0.0, 0.0],   # label 0, tied with class 1: the tie counts against it, rank 1
    ])
    labels = torch.tensor([1, 2, 3, 0])
    acc = topk_accuracy(scores, labels, ks=(1, 2, 3, 4, 5))
    assert acc == pytest.approx({1: 25.0, 2: 75.0, 3: 75.0, 4: 100.0, 5: 100.0})


def test_topk_accuracy_collapsed_scores_get_no_credit() -> None:
    acc = topk_accuracy(np.zeros((6, 10), dtype=np.float32), np.arange(6))
    assert acc == {1: 0.0, 5: 0.0}


def test_metrics_reject_bad_labels_and_nan_scores() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="scores contain NaN"):
        topk_accuracy(torch.full((2, 3), math.nan), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="scores contain NaN"):
        mean_average_precision(np.full((2, 3), np.nan), np.eye(3)[:2])


def _random_multi_hot(rng: np.random.Generator, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    targets = (rng.random((n, c)) < 0.3).astype(np.int64)
    # Scores correlated with the targets so AP and AUC are far from chance, and rounded to create ties.
    scores = np.round(targets * 0.7 + rng.normal(size=(n, c)), 1)
    return scores, targets


def test_mean_average_precision_matches_sklearn_with_ties_and_empty_classes() -> None:
    rng = np.random.default_rng(0)
    scores, targets = _random_multi_hot(rng, 200, 70)   # 70 > one class chunk, so chunk borders are covered
    targets[:, 5] = 0
    per_class = [average_precision_score(targets[:, c], scores[:, c]) for c in range(70) if targets[:, c].any()]
    assert mean_average_precision(scores, targets) == pytest.approx(100 * np.mean(per_class), abs=1e-9)
    assert mean_average_precision(torch.from_numpy(scores).float(), torch.from_numpy(targets)) == pytest.approx(
        100 * np.mean(per_class), abs=1e-4)


def test_per_class_average_precision_matches_sklearn_for_every_label_format() -> None:
    rng = np.random.default_rng(1)
    scores, targets = _random_multi_hot(rng, 120, 6)
    targets[:, 2] = 0
    rows = per_class_average_precision(scores, targets, [6], multi_label=True)
    assert [(t, c, p) for t, c, p, _ in rows] == [(0, c, int(targets[:, c].sum())) for c in range(6)]
    for _, c, _, ap in rows:
        if c == 2:
            assert np.isnan(ap)
        else:
            assert ap == pytest.approx(100 * average_precision_score(targets[:, c], scores[:, c]), abs=1e-9)
    assert np.nanmean([ap for *_, ap in rows]) == pytest.approx(mean_average_precision(scores, targets), abs=1e-9)
    # Single-label: one class against the rest; two tasks (verb, noun): each head against its own labels.
    labels = np.stack([rng.integers(0, 3, 120), rng.integers(0, 2, 120)], axis=1)
    rows = per_class_average_precision(scores[:, :5], labels, [3, 2], multi_label=False)
    assert [(t, c) for t, c, _, _ in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    verb_ap = average_precision_score(labels[:, 0] == 1, scores[:, 1])
    assert rows[1][2] == int((labels[:, 0] == 1).sum()) and rows[1][3] == pytest.approx(100 * verb_ap, abs=1e-9)
    noun_ap = average_precision_score(labels[:, 1] == 0, scores[:, 3])
    assert rows[3][3] == pytest.approx(100 * noun_ap, abs=1e-9)
    single = per_class_average_precision(scores[:, :3], labels[:, 0], [3], multi_label=False)
    assert single == rows[:3]


def test_mean_auc_matches_sklearn_and_skips_one_sided_classes() -> None:
    rng = np.random.default_rng(1)
    scores, targets = _random_multi_hot(rng, 150, 20)
    targets[:, 3] = 0
    targets[:, 4] = 1
    per_class = [roc_auc_score(targets[:, c], scores[:, c]) for c in range(20) if c not in (3, 4)]
    assert mean_auc(scores, targets) == pytest.approx(100 * np.mean(per_class), abs=1e-9)


def test_d_prime_matches_scipy() -> None:
    for auc in (0.5, 0.7, 0.93, 0.999):
        assert d_prime(auc) == pytest.approx(math.sqrt(2) * norm.ppf(auc), abs=1e-9)
    assert d_prime(1.0) == math.inf
    with pytest.raises(ValueError, match="divide a percentage by 100"):
        d_prime(93.0)


def _brute_force_action_topk(verb: np.ndarray, noun: np.ndarray, vl: np.ndarray, nl: np.ndarray, k: int) -> float:
    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    correct = 0
    for i in range(len(verb)):
        pairs = np.outer(softmax(verb[i:i + 1])[0], softmax(noun[i:i + 1])[0]).ravel()
        top = np.argsort(-pairs)[:k]
        correct += int(vl[i] * noun.shape[1] + nl[i] in top)
    return 100.0 * correct / len(verb)


def test_action_topk_matches_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    n, v, u = 60, 7, 11
    verb, noun = rng.normal(size=(n, v)) * 2, rng.normal(size=(n, u)) * 2
    vl, nl = rng.integers(0, v, n), rng.integers(0, u, n)
    # A tiny chunk forces several chunks, as for N x 97 x 300 on the real set.
    monkeypatch.setattr("playitback.metrics._ACTION_CHUNK_ELEMENTS", 3 * v * u)
    got = action_topk(torch.from_numpy(verb).float(), torch.from_numpy(noun).float(), torch.from_numpy(vl),
                      torch.from_numpy(nl), ks=(1, 5, 20))
    for k in (1, 5, 20):
        assert got[k] == pytest.approx(_brute_force_action_topk(verb, noun, vl, nl, k))
    assert 0 < got[1] < got[5] < got[20] < 100


def test_classification_metrics_single_label_matches_references() -> None:
    rng = np.random.default_rng(3)
    labels = np.arange(40) % 8
    scores = rng.normal(size=(40, 8))
    scores[np.arange(40), labels] += 1.0
    out = classification_metrics(torch.from_numpy(scores), torch.from_numpy(labels), LabelSpace((8,)))
    one_hot = np.eye(8)[labels]
    auc = np.mean([roc_auc_score(one_hot[:, c], scores[:, c]) for c in range(8)])
    assert set(out) == {"top1_acc", "top5_acc", "mAP", "AUC", "dprime"}
    assert out["top1_acc"] == pytest.approx(100 * np.mean(scores.argmax(1) == labels))
    assert out["mAP"] == pytest.approx(100 * average_precision_score(one_hot, scores, average="macro"))
    assert out["AUC"] == pytest.approx(100 * auc)
    assert out["dprime"] == pytest.approx(math.sqrt(2) * norm.ppf(auc))


def test_classification_metrics_multi_label_top1_is_positive_rate() -> None:
    targets = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1], [0.0, 0.1, 0.7]])
    out = classification_metrics(scores, targets, LabelSpace((3,), multi_label=True))
    assert set(out) == {"top1_acc", "mAP", "AUC", "dprime"}
    assert out["top1_acc"] == pytest.approx(200 / 3)
    assert out["mAP"] == pytest.approx(100 * average_precision_score(targets.numpy(), scores.numpy(), average="macro"))


def test_classification_metrics_epic_two_tasks() -> None:
    rng = np.random.default_rng(4)
    n = 30
    verb, noun = rng.normal(size=(n, 5)), rng.normal(size=(n, 6))
    labels = np.stack([rng.integers(0, 5, n), rng.integers(0, 6, n)], axis=1)
    epic = LabelSpace((5, 6), task_names=("verb", "noun"))
    out = classification_metrics(torch.from_numpy(np.concatenate([verb, noun], 1)), torch.from_numpy(labels), epic)
    assert out["verb_top1_acc"] == pytest.approx(100 * np.mean(verb.argmax(1) == labels[:, 0]))
    assert out["noun_top1_acc"] == pytest.approx(100 * np.mean(noun.argmax(1) == labels[:, 1]))
    assert out["action_top5_acc"] == pytest.approx(_brute_force_action_topk(verb, noun, labels[:, 0], labels[:, 1], 5))
    with pytest.raises(ValueError, match=r"scores must be \[N, 11\]"):
        classification_metrics(torch.zeros(n, 10), torch.from_numpy(labels), epic)


def test_view_ensemble_sum_and_max_match_numpy() -> None:
    rng = np.random.default_rng(5)
    clips, views, k = 6, 3, 4
    per_view = rng.normal(size=(clips, views, k)).astype(np.float32) - 40.0
    labels = rng.integers(0, k, clips)
    order = rng.permutation(clips * views)   # views arrive shuffled, in two batches
    for method, reference in (("sum", per_view.sum(1)), ("max", per_view.max(1))):
        ens = ViewEnsemble(clips, views, k, method=method)
        for batch in np.array_split(order, 2):
            c, v = batch // views, batch % views
            ens.add(torch.from_numpy(c), torch.from_numpy(v), torch.from_numpy(per_view[c, v]),
                    torch.from_numpy(labels[c]))
        result = ens.finalize()
        np.testing.assert_allclose(result.scores.numpy(), reference, rtol=1e-6)
        np.testing.assert_array_equal(result.per_view.numpy(), per_view)
        np.testing.assert_array_equal(result.labels.numpy(), labels)
        assert result.missing == []


def test_view_ensemble_sum_starts_at_zero_with_large_negative_logits() -> None:
    ens = ViewEnsemble(num_clips=1, num_views=2, num_scores=2, method="sum")
    ens.add(torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([[-20.0, -1e4], [-30.0, -3.0]]),
            torch.tensor([0, 0]))
    scores, *_ = ens.finalize()
    assert scores.tolist() == [[-50.0, -10003.0]]


def test_view_ensemble_missing_views_warn(caplog: pytest.LogCaptureFixture) -> None:
    ens = ViewEnsemble(num_clips=3, num_views=2, num_scores=2, method="max")
    ens.add(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), torch.tensor([[1.0, -5.0], [2.0, -6.0], [3.0, 4.0]]),
            torch.tensor([[1, 0], [1, 0], [0, 1]]))
    with caplog.at_level(logging.WARNING, logger="playitback.metrics"):
        result = ens.finalize()
    # Clip 1 misses a view; clip 2 got none, so it is not received (the engine leaves it out of the metrics).
    assert result.missing == [1]
    assert result.received.tolist() == [True, True, False]
    assert "did not get all 2 views" in caplog.text
    assert result.scores[0].tolist() == [2.0, -5.0]
    assert result.scores[1].tolist() == [3.0, 4.0]
    assert result.scores[2].tolist() == [-math.inf, -math.inf]


def test_view_ensemble_rejects_duplicates_and_inconsistent_labels() -> None:
    ens = ViewEnsemble(num_clips=2, num_views=2, num_scores=1)
    ens.add(torch.tensor([0]), torch.tensor([0]), torch.zeros(1, 1), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"received twice: \[\(0, 0\)\]"):
        ens.add(torch.tensor([0]), torch.tensor([0]), torch.zeros(1, 1), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"received twice: \[\(1, 1\)\]"):
        ens.add(torch.tensor([1, 1]), torch.tensor([1, 1]), torch.zeros(2, 1), torch.tensor([2, 2]))
    with pytest.raises(ValueError, match=r"views of clips \[0\] carry different labels"):
        ens.add(torch.tensor([0]), torch.tensor([1]), torch.zeros(1, 1), torch.tensor([4]))
    with pytest.raises(ValueError, match=r"views of clips \[1\] carry different labels"):
        ens.add(torch.tensor([1, 1]), torch.tensor([0, 1]), torch.zeros(2, 1), torch.tensor([2, 5]))


def test_task_names_come_from_the_label_space_not_from_a_class_count() -> None:
    """Any pair of tasks gets per-task and joint ("action") accuracies under its own names; the joint top-1 is the
    share of clips with both tasks right (hand-computed)."""
    scores = torch.tensor([[2.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    labels = torch.tensor([[0, 1], [1, 1], [0, 0]])  # task a right on all 3, task b right on clips 0 and 2
    out = classification_metrics(scores, labels, LabelSpace((2, 2), task_names=("instrument", "room")))
    assert out["instrument_top1_acc"] == pytest.approx(100.0)
    assert out["room_top1_acc"] == pytest.approx(200 / 3)
    assert out["action_top1_acc"] == pytest.approx(200 / 3)
    assert "verb_top1_acc" not in out
    assert LabelSpace((2, 2), task_names=("a", "b")).primary_metric(out) == out["action_top1_acc"]
    assert LabelSpace((4,), multi_label=True).primary_metric_name == "mAP"
    assert LabelSpace((4,)).primary_metric_name == "top1_acc"

"""Evaluation metrics and the multi-view test ensemble.

Every function takes tensors or numpy arrays and returns plain Python floats; nothing here reads a config. mAP and AUC
rank the scores as given: an element-wise monotone transform (sigmoid) leaves them unchanged, softmax (which couples
the classes of a sample) does not. NaN scores are rejected, because every comparison with NaN is false and would
silently count as a correct ranking.

Shape legend: N samples (clips), C classes, V verb classes, U noun classes, K scores per sample, T tasks.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from playitback.data.labels import LabelSpace

logger = logging.getLogger(__name__)

ArrayLike = Tensor | np.ndarray

# Elements of the per-chunk verb x noun product in action_topk (float64): 2**22 * 8 bytes = 32 MiB per chunk.
_ACTION_CHUNK_ELEMENTS = 2**22
# Classes per chunk in mean_average_precision, which holds a few [N, chunk] float64 arrays at once.
_AP_CLASS_CHUNK = 64
_NAN_MESSAGE = "scores contain NaN (did training diverge?); metrics on NaN scores are meaningless"


def _as_tensor(x: ArrayLike) -> Tensor:
    return x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if not isinstance(x, Tensor):
        return np.asarray(x)
    x = x.detach().cpu()
    # numpy has no bfloat16, and half precision would only add rounding to the metrics.
    return (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).numpy()


def _true_class_rank(scores: Tensor, labels: Tensor) -> Tensor:
    """Rank (0 = best) of each sample's true class, counting ties against the sample.

    Ties count against the sample so that a collapsed model giving every class the same score gets no credit (an
    optimistic rule would give it 100 % top-1).

    Args:
        scores: Scores, shape [N, C].
        labels: True class indices, shape [N].

    Returns:
        int64 ranks, shape [N].
    """
    true_score = scores.gather(1, labels[:, None])
    return (scores >= true_score).sum(dim=1) - 1


def _check_scores(scores: Tensor) -> Tensor:
    """Rejects NaN scores (any shape) and returns them unchanged."""
    if torch.isnan(scores).any():
        raise ValueError(_NAN_MESSAGE)
    return scores


def _check_labels(labels: Tensor, num_classes: int, name: str) -> Tensor:
    """Validates class indices of shape [N] against C = ``num_classes`` and returns them as int64."""
    if labels.ndim != 1:
        raise ValueError(f"{name} must be class indices of shape [N], got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise ValueError(f"{name} must be integer class indices; for multi-hot targets use mean_average_precision")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


def topk_accuracy(scores: ArrayLike, labels: ArrayLike, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent.

    A sample is correct when fewer than k classes score at least as high as its true class (ties count against it).
    A k larger than C counts every sample as correct.

    Args:
        scores: Scores (logits or probabilities), shape [N, C].
        labels: True class indices, shape [N].
        ks: The k values to report.

    Returns:
        {k: accuracy in percent} for every k in ``ks``.
    """
    scores, labels = _as_tensor(scores).float(), _as_tensor(labels)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be [N, C] with N = len(labels), got {tuple(scores.shape)} and {len(labels)}")
    if scores.shape[0] == 0:
        raise ValueError("topk_accuracy needs at least one sample")
    rank = _true_class_rank(_check_scores(scores), _check_labels(labels, scores.shape[1], "labels"))
    return {k: (rank < k).double().mean().item() * 100.0 for k in ks}


def _check_multi_hot(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Validates scores [N, C] and 0/1 targets [N, C]; returns the targets as a boolean array [N, C]."""
    if np.isnan(scores).any():
        raise ValueError(_NAN_MESSAGE)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(
            f"scores and targets must both be [N, C], got {scores.shape} and {targets.shape}; "
            "convert class indices to one-hot first"
        )
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be multi-hot (0/1); soft labels have no average precision")
    return targets.astype(bool)


def _average_precision_columns(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Average precision of every column, scikit-learn's step-wise definition, NaN where a column has no positive.

    AP = sum over distinct thresholds of (R_n - R_{n-1}) * P_n. Samples sharing a score form one threshold, so every
    positive is credited with the precision at the end of its tie group.

    Args:
        scores: Scores, shape [N, C].
        targets: Boolean targets, shape [N, C].

    Returns:
        AP per column, shape [C].
    """
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    hits = np.take_along_axis(targets, order, axis=0).astype(np.float64)
    true_pos = np.cumsum(hits, axis=0)
    precision = true_pos / np.arange(1, n + 1, dtype=np.float64)[:, None]
    group_end = np.ones_like(sorted_scores, dtype=bool)
    group_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    # Index of the last row of each row's tie group: the nearest group end at or below the row.
    end_index = np.where(group_end, np.arange(n)[:, None], n)
    end_index = np.minimum.accumulate(end_index[::-1], axis=0)[::-1]
    credited = np.take_along_axis(precision, end_index, axis=0)
    num_pos = hits.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_pos > 0, (hits * credited).sum(axis=0) / num_pos, np.nan)


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """Class-wise mean average precision in percent.

    Uses scikit-learn's AP (step-wise precision at each recall change) per class and averages over the classes with
    at least one positive; classes absent from ``targets`` are skipped.

    Args:
        scores: Scores, shape [N, C].
        targets: Multi-hot (or one-hot) targets, shape [N, C].

    Returns:
        mAP in percent, NaN when no class has a positive.
    """
    per_class = average_precision_per_class(scores, targets)
    valid = ~np.isnan(per_class)
    return float(per_class[valid].mean() * 100.0) if valid.any() else math.nan


def average_precision_per_class(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Average precision of every class (scikit-learn's definition), as a fraction; NaN for a class without positives.

    Args:
        scores: Scores, shape [N, C].
        targets: Multi-hot (or one-hot) targets, shape [N, C].

    Returns:
        AP per class, float64 [C].
    """
    scores_np = _as_numpy(scores).astype(np.float64)
    targets_np = _check_multi_hot(scores_np, _as_numpy(targets))
    return np.concatenate([
        _average_precision_columns(scores_np[:, c:c + _AP_CLASS_CHUNK], targets_np[:, c:c + _AP_CLASS_CHUNK])
        for c in range(0, scores_np.shape[1], _AP_CLASS_CHUNK)
    ])


def per_class_average_precision(scores: ArrayLike, labels: ArrayLike, class_counts: Sequence[int],
                                multi_label: bool) -> list[tuple[int, int, int, float]]:
    """(task, class id, positives, AP in percent) of every class of every task, the terms of the mAP.

    Multi-hot labels give each class's own positives; class indices (one per task) are one-hot per task, so a
    single-label task's AP is that of one class against the rest. AP is NaN for a class without positives.

    Args:
        scores: Scores [N, sum(class_counts)], tasks concatenated.
        labels: Multi-hot [N, C], class indices [N], or class indices per task [N, T].
        class_counts: Classes per task.
        multi_label: Whether ``labels`` are multi-hot.
    """
    scores_t, labels_t = _as_tensor(scores).float(), _as_tensor(labels)
    if multi_label:
        targets = [labels_t]
    else:
        per_task = labels_t.reshape(labels_t.shape[0], -1)
        targets = [torch.nn.functional.one_hot(per_task[:, t].long(), count) for t, count in enumerate(class_counts)]
    rows = []
    for task, (task_scores, task_targets) in enumerate(zip(scores_t.split(list(class_counts), dim=1), targets)):
        positives = task_targets.sum(0).tolist()
        for class_id, ap in enumerate(average_precision_per_class(task_scores, task_targets)):
            rows.append((task, class_id, int(positives[class_id]), float(ap) * 100.0))
    return rows


def mean_auc(scores: ArrayLike, targets: ArrayLike) -> float:
    """Mean per-class ROC-AUC in percent.

    Per class, AUC is the Mann-Whitney statistic (probability that a positive outscores a negative, ties counting one
    half), which equals the area under the ROC curve. Classes without both a positive and a negative are skipped.

    Args:
        scores: Scores, shape [N, C].
        targets: Multi-hot (or one-hot) targets, shape [N, C].

    Returns:
        Mean AUC in percent, NaN when no class has both labels.
    """
    scores_np = _as_numpy(scores).astype(np.float64)
    targets_np = _check_multi_hot(scores_np, _as_numpy(targets))
    ranks = rankdata(scores_np, axis=0, method="average")
    num_pos = targets_np.sum(axis=0).astype(np.float64)
    num_neg = targets_np.shape[0] - num_pos
    valid = (num_pos > 0) & (num_neg > 0)
    if not valid.any():
        return math.nan
    pos_rank_sum = (ranks * targets_np).sum(axis=0)
    auc = (pos_rank_sum[valid] - num_pos[valid] * (num_pos[valid] + 1) / 2) / (num_pos[valid] * num_neg[valid])
    return float(auc.mean() * 100.0)


def d_prime(auc_fraction: float) -> float:
    """Sensitivity index d' = sqrt(2) * Phi^-1(AUC).

    Args:
        auc_fraction: Mean AUC as a fraction in [0, 1] (not a percent).

    Returns:
        d' (unbounded; +-inf at AUC 1 or 0, NaN for a NaN AUC).
    """
    if math.isnan(auc_fraction):
        return math.nan
    if not 0.0 <= auc_fraction <= 1.0:
        raise ValueError(f"auc_fraction must be in [0, 1], got {auc_fraction}; divide a percentage by 100")
    if auc_fraction in (0.0, 1.0):
        return math.copysign(math.inf, auc_fraction - 0.5)
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc_fraction)


def action_topk(
    verb_scores: ArrayLike,
    noun_scores: ArrayLike,
    verb_labels: ArrayLike,
    noun_labels: ArrayLike,
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """EPIC-KITCHENS action top-k accuracy in percent (the official definition).

    Every (verb, noun) pair is scored by the product of the verb and noun softmax probabilities; an action is correct
    when fewer than k pairs score at least as high as the true pair (ties count against it). The V x U products are
    built for a chunk of samples at a time, so memory stays bounded for any N.

    Args:
        verb_scores: Verb logits, shape [N, V].
        noun_scores: Noun logits, shape [N, U].
        verb_labels: True verb indices, shape [N].
        noun_labels: True noun indices, shape [N].
        ks: The k values to report.

    Returns:
        {k: action accuracy in percent} for every k in ``ks``.
    """
    verb_prob = torch.softmax(_check_scores(_as_tensor(verb_scores).double()), dim=1)
    noun_prob = torch.softmax(_check_scores(_as_tensor(noun_scores).double()), dim=1)
    num = verb_prob.shape[0]
    if noun_prob.shape[0] != num or len(verb_labels) != num or len(noun_labels) != num or num == 0:
        raise ValueError("verb/noun scores and labels must all have the same, non-zero number of samples N")
    verb_labels = _check_labels(_as_tensor(verb_labels), verb_prob.shape[1], "verb_labels")
    noun_labels = _check_labels(_as_tensor(noun_labels), noun_prob.shape[1], "noun_labels")
    chunk = max(1, _ACTION_CHUNK_ELEMENTS // (verb_prob.shape[1] * noun_prob.shape[1]))
    ranks = []
    for start in range(0, num, chunk):
        rows = slice(start, start + chunk)
        pair_prob = (verb_prob[rows, :, None] * noun_prob[rows, None, :]).flatten(1)
        true_pair = verb_labels[rows] * noun_prob.shape[1] + noun_labels[rows]
        ranks.append(_true_class_rank(pair_prob, true_pair))
    rank = torch.cat(ranks)
    return {k: (rank < k).double().mean().item() * 100.0 for k in ks}


def classification_metrics(scores: ArrayLike, labels: ArrayLike, label_space: LabelSpace) -> dict[str, float]:
    """All metrics of a validation or test set; the one entry point the engine uses.

    * One task, single-label (VGG-Sound): ``top1_acc``, ``top5_acc``, plus ``mAP``, ``AUC``, ``dprime`` over one-hot
      labels, as the original VGG-Sound evaluation.
    * One task, multi-label (AudioSet): ``mAP``, ``AUC``, ``dprime`` and ``top1_acc`` (share of samples whose top-1
      class is a positive).
    * Two tasks (EPIC-KITCHENS verb, noun): ``<task>_top1_acc``, ``<task>_top5_acc`` for each task (named by
      ``label_space.task_names``) and ``action_top1_acc``, ``action_top5_acc`` (the pair, :func:`action_topk`).

    Everything is in percent except ``dprime``. Classes absent from the labels are skipped for mAP (no positive) and
    AUC (no positive or no negative), so a small split averages over fewer classes than the model has.

    Args:
        scores: Scores, shape [N, K] with K = label_space.num_outputs (tasks concatenated in order).
        labels: Class indices [N] (single-label), multi-hot [N, K] (multi-label) or class indices per task [N, T].
        label_space: The tasks, their classes and whether labels are multi-hot.

    Returns:
        Metric name -> value.
    """
    class_counts, multi_label = label_space.class_counts, label_space.multi_label
    scores_t, labels_t = _as_tensor(scores).float(), _as_tensor(labels)
    if scores_t.ndim != 2 or scores_t.shape[1] != sum(class_counts):
        raise ValueError(
            f"scores must be [N, {sum(class_counts)}] for class_counts {list(class_counts)}, "
            f"got {tuple(scores_t.shape)}"
        )
    if label_space.num_tasks > 2:
        raise ValueError(f"metrics are defined for one task or a pair of tasks, got {list(label_space.task_names)}")
    if label_space.num_tasks == 2:
        if labels_t.ndim != 2 or labels_t.shape[1] != 2:
            raise ValueError(
                f"two tasks ({', '.join(label_space.task_names)}) need class indices of shape [N, 2], got "
                f"{tuple(labels_t.shape)}"
            )
        first, second = scores_t.split(list(class_counts), dim=1)
        out = {}
        for name, task_scores, task_labels in zip(label_space.task_names, (first, second), labels_t.unbind(1)):
            out.update({f"{name}_top{k}_acc": v for k, v in topk_accuracy(task_scores, task_labels).items()})
        action = action_topk(first, second, labels_t[:, 0], labels_t[:, 1])
        out.update({f"action_top{k}_acc": v for k, v in action.items()})
        return out
    if multi_label:
        targets = labels_t
        if targets.shape != scores_t.shape:
            raise ValueError(
                f"multi-label targets must be multi-hot [N, C] like the scores {tuple(scores_t.shape)}, "
                f"got {tuple(targets.shape)}"
            )
        top1 = scores_t.argmax(dim=1, keepdim=True)
        out = {"top1_acc": targets.gather(1, top1).float().mean().item() * 100.0}
    else:
        accuracy = topk_accuracy(scores_t, labels_t)
        targets = torch.nn.functional.one_hot(labels_t.long(), scores_t.shape[1])
        out = {"top1_acc": accuracy[1], "top5_acc": accuracy[5]}
    out["mAP"] = mean_average_precision(scores_t, targets)
    out["AUC"] = mean_auc(scores_t, targets)
    out["dprime"] = d_prime(out["AUC"] / 100.0)
    return out


class EnsembleResult(NamedTuple):
    """What :meth:`ViewEnsemble.finalize` returns.

    Shape legend: N clips, V views, K scores per view.

    Attributes:
        scores: Ensembled scores, shape [N, K].
        per_view: Scores of every view, shape [N, V, K]; NaN where a view never arrived.
        labels: Labels per clip, shape [N, *label_shape] as passed to ``add``.
        missing: Indices of the clips that got some but not all V views.
        received: bool [N]: the clips that got at least one view (a clip with none has no score to rank).
    """

    scores: Tensor
    per_view: Tensor
    labels: Tensor
    missing: list[int]
    received: Tensor


class ViewEnsemble:
    """Accumulates the per-view scores of a multi-view test and ensembles them per clip.

    The sum accumulator starts at 0 and the max accumulator at -inf. (The original started both at -1e10, and in
    float32 -1e10 plus any logit rounds back to -1e10, so every score collapsed to one constant.)

    Shape legend: N clips in the test set, V views per clip, K scores per view, B items per ``add`` call.

    Args:
        num_clips: Number of clips N.
        num_views: Views per clip V.
        num_scores: Scores per view K.
        method: "sum" or "max" over views.
    """

    def __init__(self, num_clips: int, num_views: int, num_scores: int, method: str = "sum") -> None:
        if method not in ("sum", "max"):
            raise ValueError(f"method must be 'sum' or 'max', got {method!r}")
        self.method = method
        self.per_view = torch.full((num_clips, num_views, num_scores), math.nan)
        self.seen = torch.zeros(num_clips, num_views, dtype=torch.bool)
        self.labels: Tensor | None = None
        self.has_label = torch.zeros(num_clips, dtype=torch.bool)

    def add(self, clip_indices: ArrayLike, view_indices: ArrayLike, scores: ArrayLike, labels: ArrayLike) -> None:
        """Records one batch of views.

        Args:
            clip_indices: Clip index of each item, shape [B], in [0, N).
            view_indices: View index of each item, shape [B], in [0, V).
            scores: Scores, shape [B, K].
            labels: Labels, shape [B, *label_shape] (class index, multi-hot row or per-task indices).

        Raises:
            ValueError: If an index is out of range, a (clip, view) pair arrives twice, or a clip's views disagree
                on its label.
        """
        clips, views = _as_tensor(clip_indices).long(), _as_tensor(view_indices).long()
        scores_t, labels_t = _as_tensor(scores).float(), _as_tensor(labels)
        num_clips, num_views, num_scores = self.per_view.shape
        if not (len(clips) == len(views) == len(scores_t) == len(labels_t)):
            raise ValueError("clip_indices, view_indices, scores and labels must have the same length")
        if scores_t.ndim != 2 or scores_t.shape[1] != num_scores:
            raise ValueError(f"scores must be [B, {num_scores}], got {tuple(scores_t.shape)}")
        if len(clips) and (clips.min() < 0 or clips.max() >= num_clips or views.min() < 0 or views.max() >= num_views):
            raise ValueError(f"clip indices must be in [0, {num_clips}) and view indices in [0, {num_views})")
        pair = clips * num_views + views
        _, inverse, counts = pair.unique(return_inverse=True, return_counts=True)
        repeated = self.seen.flatten()[pair] | (counts[inverse] > 1)
        if repeated.any():
            dup = sorted({(int(c), int(v)) for c, v in zip(clips[repeated], views[repeated])})
            raise ValueError(
                f"(clip, view) pairs received twice: {dup[:10]}; the test sampler must not pad or repeat items"
            )
        if self.labels is None:
            self.labels = torch.zeros((num_clips, *labels_t.shape[1:]), dtype=labels_t.dtype)
        if labels_t.shape[1:] != self.labels.shape[1:]:
            raise ValueError(
                f"labels must have per-item shape {tuple(self.labels.shape[1:])} like the first batch, "
                f"got {tuple(labels_t.shape[1:])}"
            )
        # Views of one clip in this batch must agree too: compare each against one representative item of its clip.
        representative = torch.empty(num_clips, dtype=torch.long)
        representative[clips] = torch.arange(len(clips))
        known = self.has_label[clips].view(-1, *[1] * (labels_t.ndim - 1))
        reference = torch.where(known, self.labels[clips], labels_t[representative[clips]])
        mismatch = (reference != labels_t).reshape(len(clips), -1).any(dim=1)
        if mismatch.any():
            bad = sorted({int(c) for c in clips[mismatch]})
            raise ValueError(f"views of clips {bad[:10]} carry different labels; all views of a clip must share it")
        self.labels[clips] = labels_t
        self.has_label[clips] = True
        self.per_view[clips, views] = scores_t
        self.seen[clips, views] = True

    def finalize(self) -> EnsembleResult:
        """Ensembles the views; logs a warning listing clips that miss some of their views.

        Clips with missing views are ensembled over the views they got. A clip with none gets 0 for "sum" and -inf
        for "max" and is marked not ``received``: leave it out of the metrics (the engine does).

        Returns:
            :class:`EnsembleResult` (scores [N, K], per_view [N, V, K], labels [N, ...], missing clip indices,
            received [N]).
        """
        if self.labels is None:
            raise ValueError("ViewEnsemble.finalize called before any add()")
        seen = self.seen[:, :, None]
        if self.method == "sum":
            scores = torch.where(seen, self.per_view, 0.0).sum(dim=1)
        else:
            scores = torch.where(seen, self.per_view, -math.inf).amax(dim=1)
        received = self.seen.any(dim=1)
        missing = torch.nonzero(received & ~self.seen.all(dim=1)).flatten().tolist()
        if missing:
            logger.warning(
                "%d of %d clips did not get all %d views (first: %s); their scores use only the views received",
                len(missing), self.seen.shape[0], self.seen.shape[1], missing[:10],
            )
        return EnsembleResult(scores, self.per_view.clone(), self.labels.clone(), missing, received)

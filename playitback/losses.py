"""Losses. Targets are always float [B, K]: a probability distribution per task block (one-hot, label-smoothed or
mixed) for single-label and multitask heads, multi-hot for multi-label. One code path serves hard and soft targets.

Shape legend: B batch, K total classes (tasks concatenated), S playbacks.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from playitback.data.labels import LabelSpace
from playitback.models.output import ModelOutput


def labels_to_targets(labels: Tensor, class_counts: Sequence[int], multi_label: bool) -> Tensor:
    """Dataset labels -> float targets [B, K].

    Args:
        labels: int64 [B] (single-label), float [B, K] multi-hot (multi-label) or int64 [B, n_tasks] (multitask).
    """
    if multi_label or labels.is_floating_point():
        return labels.float()
    if labels.dim() == 1:
        return F.one_hot(labels, class_counts[0]).float()
    return torch.cat([F.one_hot(labels[:, t], c).float() for t, c in enumerate(class_counts)], dim=1)


def classification_loss(logits: Tensor, targets: Tensor, class_counts: Sequence[int], multi_label: bool) -> Tensor:
    """Mean loss of logits [B, K] against targets [B, K]: binary cross-entropy with logits for multi-label, else the
    cross-entropy of each task block with its (soft) target distribution, averaged over tasks (EPIC: 0.5 (verb + noun))."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), targets)
    losses = [
        -(t * F.log_softmax(z.float(), dim=-1)).sum(-1).mean()
        for z, t in zip(logits.split(list(class_counts), -1), targets.split(list(class_counts), -1))
    ]
    return torch.stack(losses).mean()


def true_class_score(logits: Tensor, targets: Tensor, class_counts: Sequence[int], multi_label: bool) -> Tensor:
    """Per-sample probability of the labelled class(es) [B]: softmax probability of the target class (expected under
    soft targets), averaged over tasks; for multi-label the mean sigmoid probability of the positive classes."""
    if multi_label:
        return (torch.sigmoid(logits.float()) * targets).sum(-1) / targets.sum(-1).clamp_min(1e-6)
    scores = [
        (F.softmax(z.float(), dim=-1) * t).sum(-1)
        for z, t in zip(logits.split(list(class_counts), -1), targets.split(list(class_counts), -1))
    ]
    return torch.stack(scores).mean(0)


def saliency_loss(pos_logits: Tensor, neg_logits: Tensor, targets: Tensor, class_counts: Sequence[int],
                  multi_label: bool, margin: float) -> Tensor:
    """The objective that trains the temporal saliency, averaged over playbacks.

    For every playback, the tokens pooled with the saliency weights ("positive") must classify the clip (a
    classification loss), and must give the labelled class a probability higher by `margin` than the tokens pooled
    with the complementary weights ("negative") (a hinge). Both terms reach every saliency parameter through the soft
    pooling weights. See docs/method.md.

    Args:
        pos_logits, neg_logits: [S, B, K] encoder-head logits of the positive and negative pooled tokens.
        targets: [B, K].
    """
    terms = []
    for pos, neg in zip(pos_logits, neg_logits):
        contrast = true_class_score(pos, targets, class_counts, multi_label) - true_class_score(
            neg, targets, class_counts, multi_label
        )
        hinge = F.relu(margin - contrast).mean()
        terms.append(classification_loss(pos, targets, class_counts, multi_label) + hinge)
    return torch.stack(terms).mean()


def evidence_loss(evidence_probs: Tensor, targets: Tensor) -> Tensor:
    """The frame-evidence (MIL) saliency objective, averaged over playbacks: binary cross-entropy of the pooled clip
    probabilities of every class against the targets (one-hot, soft or multi-hot), as in weakly supervised sound
    event detection.

    Args:
        evidence_probs: [S, B, K] clip probabilities in [0, 1] from the MIL pooling.
        targets: [B, K].
    """
    probs = evidence_probs.float().clamp(1e-7, 1 - 1e-7)
    return F.binary_cross_entropy(probs, targets.unsqueeze(0).expand_as(probs))


def saliency_priors(saliency: Tensor, budget: float) -> tuple[Tensor, Tensor]:
    """Shape priors on the saliency curves, averaged over playbacks and samples.

    Args:
        saliency: [B, S, T0] in [0, 1].
        budget: the share of frames the curve should cover.

    Returns:
        ``(area, contiguity)``: the squared distance of each curve's mean from ``budget``, and its total variation
        (mean absolute step between neighbouring frames), which is small for few, long runs.
    """
    area = (saliency.float().mean(-1) - budget).pow(2).mean()
    contiguity = saliency.float().diff(dim=-1).abs().mean()
    return area, contiguity


def _contrast(inputs: Sequence[Tensor], targets: Tensor, class_counts: Sequence[int], multi_label: bool,
              margin: float) -> Tensor:
    pos_logits, neg_logits = inputs
    return saliency_loss(pos_logits, neg_logits, targets, class_counts, multi_label, margin)


def _mil(inputs: Sequence[Tensor], targets: Tensor, class_counts: Sequence[int], multi_label: bool,
         margin: float) -> Tensor:
    (evidence_probs,) = inputs
    return evidence_loss(evidence_probs, targets)


#: The saliency objectives by the name a saliency class gives as its ``objective``
#: (:class:`playitback.models.saliency_interface.Saliency`): ``loss(inputs, targets, class_counts, multi_label,
#: margin)``, ``inputs`` the values of the fields the class declares (``objective_fields``, each [S, B, K]), in order.
SALIENCY_OBJECTIVES: dict[str, Callable[..., Tensor]] = {"contrast": _contrast, "mil": _mil}


class PlayItBackLoss(nn.Module):
    """L(fused) + w_aux * sum_i L(playback i) + w_rank * saliency objective (+ shape priors); the encoder alone:
    L(logits).

    The saliency objective is the one the model's saliency class declares: ``saliency_objective`` (a key of
    :data:`SALIENCY_OBJECTIVES`: "contrast", the pooling contrast of :func:`saliency_loss`, or "mil", the MIL
    objective of :func:`evidence_loss`) over the ModelOutput fields ``saliency_fields`` (the class's
    ``objective_fields``). With ``area_weight`` or ``contiguity_weight`` the priors of :func:`saliency_priors` on
    ``saliency`` are added.

    Returns a dict of scalar tensors: "loss" (the total to back-propagate) and every term.
    """

    def __init__(self, label_space: LabelSpace, aux_weight: float = 0.1, rank_weight: float = 0.1,
                 rank_margin: float = 0.05, area_weight: float = 0.0, contiguity_weight: float = 0.0,
                 budget: float = 0.0, saliency_objective: str = "contrast",
                 saliency_fields: Sequence[str] = ("pos_logits", "neg_logits")) -> None:
        super().__init__()
        if saliency_objective not in SALIENCY_OBJECTIVES:
            raise ValueError(f"saliency_objective must be one of {tuple(SALIENCY_OBJECTIVES)}, got "
                             f"{saliency_objective!r}")
        self.saliency_objective = SALIENCY_OBJECTIVES[saliency_objective]
        self.saliency_fields = tuple(saliency_fields)
        self.class_counts = list(label_space.class_counts)
        self.multi_label = label_space.multi_label
        self.aux_weight = aux_weight
        self.rank_weight = rank_weight
        self.rank_margin = rank_margin
        self.area_weight = area_weight
        self.contiguity_weight = contiguity_weight
        self.budget = budget

    def forward(self, outputs: ModelOutput, targets: Tensor) -> dict[str, Tensor]:
        """outputs: the model's (logits [B, K]; for PlayItBack also playback_logits [S, B, K], saliency [B, S, T0]
        and the saliency objective's inputs); targets [B, K]."""
        fused = classification_loss(outputs.logits, targets, self.class_counts, self.multi_label)
        if outputs.playback_logits is None:
            return {"loss": fused, "loss_fused": fused}
        aux = torch.stack([
            classification_loss(z, targets, self.class_counts, self.multi_label) for z in outputs.playback_logits
        ]).sum()
        inputs = [getattr(outputs, name) for name in self.saliency_fields]
        unset = [name for name, value in zip(self.saliency_fields, inputs) if value is None]
        if unset:
            raise ValueError(f"the saliency objective reads the model outputs {', '.join(self.saliency_fields)}, "
                             f"but the model left {', '.join(unset)} unset: build the loss with the objective and "
                             "fields of the model's saliency class")
        rank = self.saliency_objective(inputs, targets, self.class_counts, self.multi_label, self.rank_margin)
        total = fused + self.aux_weight * aux + self.rank_weight * rank
        terms = {"loss_fused": fused, "loss_aux": aux, "loss_saliency": rank}
        if self.area_weight or self.contiguity_weight:
            if outputs.saliency is None:
                raise ValueError("the saliency priors (area_weight, contiguity_weight) need the model's saliency")
            area, contiguity = saliency_priors(outputs.saliency, self.budget)
            total = total + self.area_weight * area + self.contiguity_weight * contiguity
            terms.update(loss_area=area, loss_contiguity=contiguity)
        return {"loss": total, **terms}

"""Anytime inference: stop after playback p when its prediction is confident, and what that saves.

The decoder's latents after playback p have read playbacks 0..p only (TemPr's layers are applied in order and each
playback's logits come from the state after its own layer), so ``playback_logits[p]`` is the prediction a model that
stopped after p encoder passes would make; the fused logits need every playback. A clip exits at the first playback
whose confidence reaches a threshold and keeps the fused prediction otherwise. The threshold is chosen on the
validation list for a target mean cost (:func:`calibrate_threshold`), so that the test list measures it honestly.

Costs are multiply-adds per clip: stopping after playback p costs p + 1 encoder passes, the saliencies of playbacks
0..p-1 (which build the composites p reads) and the share (p + 1) / S of the decoder, the encoder head and the rest;
running to the end is charged the full forward (the last playback's saliency included, though nothing reads it).

Shape legend: S playbacks, N clips, K outputs (tasks concatenated).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from playitback.config.choices import EXIT_POLICIES
from playitback.data.labels import LabelSpace
from playitback.metrics import classification_metrics


def exit_confidence(logits: Tensor, class_counts: Sequence[int], multi_label: bool, policy: str) -> Tensor:
    """How sure a prediction is, per clip.

    Args:
        logits: [..., K].
        policy: "max_prob": the largest softmax probability (the smallest over tasks); "margin": the gap between the
            two largest probabilities (the smallest over tasks). Multi-label: the mean over classes of
            ``max(p, 1 - p)`` ("max_prob") or of ``|2 p - 1|`` ("margin"), p the sigmoid.

    Returns:
        [...] in [0, 1].
    """
    if policy not in EXIT_POLICIES or policy == "none":
        raise ValueError(f"exit policy must be one of {EXIT_POLICIES[1:]}, got {policy!r}")
    logits = logits.float()
    if multi_label:
        probs = torch.sigmoid(logits)
        return (torch.maximum(probs, 1 - probs) if policy == "max_prob" else (2 * probs - 1).abs()).mean(-1)
    confidences = []
    for block in logits.split(list(class_counts), dim=-1):
        top = torch.softmax(block, dim=-1).topk(min(2, block.shape[-1]), dim=-1).values
        confidences.append(top[..., 0] if policy == "max_prob" or top.shape[-1] == 1 else top[..., 0] - top[..., 1])
    return torch.stack(confidences).amin(0)


def exit_playbacks(confidence: Tensor, threshold: float) -> Tensor:
    """The playback each clip stops after: the first p < S - 1 with ``confidence[p] >= threshold``, else S - 1.

    Args:
        confidence: [S, N].

    Returns:
        int64 [N].
    """
    num_playbacks = confidence.shape[0]
    confident = confidence[:-1] >= threshold  # [S - 1, N]; the last playback always answers
    first = torch.where(confident.any(0), confident.float().argmax(0), torch.full_like(confident[0], num_playbacks - 1,
                                                                                     dtype=torch.long))
    return first.long()


def anytime_logits(playback_logits: Tensor, fused: Tensor, exits: Tensor) -> Tensor:
    """The prediction of each clip at its exit: ``playback_logits[p]`` before the last playback, the fused logits at
    it. playback_logits [S, N, K], fused [N, K], exits [N] -> [N, K]."""
    last = playback_logits.shape[0] - 1
    early = playback_logits.gather(0, exits.clamp_max(last).view(1, -1, 1).expand(1, -1, fused.shape[-1]))[0]
    return torch.where((exits == last).unsqueeze(-1), fused, early)


def playback_costs(flops: Mapping[str, float], num_playbacks: int) -> list[float]:
    """Multi-adds per clip of stopping after each playback, and of the full forward last: S + 1 values.

    Args:
        flops: the stages of one clip's forward (``playitback.utils.flops.stage_flops``): "total", "encoder_pass",
            "saliency_{i}", and the rest ("encoder_head", "decoder", "other").
    """
    saliencies = [float(flops.get(f"saliency_{i}", 0.0)) for i in range(num_playbacks)]
    shared = float(flops["total"]) - num_playbacks * float(flops["encoder_pass"]) - sum(saliencies)
    costs = [(p + 1) * float(flops["encoder_pass"]) + sum(saliencies[:p]) + shared * (p + 1) / num_playbacks
             for p in range(num_playbacks)]
    return costs + [float(flops["total"])]


def _clip_costs(costs: Sequence[float]) -> Tensor:
    """The cost of a clip by the playback it stops after: the early exits' costs, the full forward's at the last."""
    return torch.tensor([*costs[:-2], costs[-1]], dtype=torch.float64)


@dataclass(frozen=True)
class AnytimePoint:
    """One threshold of the accuracy-vs-cost curve.

    Attributes:
        threshold: the confidence a clip needs to stop early.
        mean_cost: mean multiply-adds per clip.
        cost_fraction: mean_cost over the full forward's.
        exit_fractions: the share of clips that stop after each playback (S values).
        metrics: the label space's metrics of the anytime predictions (top1_acc, mAP, ...; the primary one selects
            checkpoints).
    """

    threshold: float
    mean_cost: float
    cost_fraction: float
    exit_fractions: list[float]
    metrics: dict[str, float]


def anytime_point(playback_logits: Tensor, fused: Tensor, labels: Tensor, label_space: LabelSpace,
                  confidence: Tensor, costs: Sequence[float], threshold: float) -> AnytimePoint:
    """The anytime predictions at one threshold: their metrics, mean cost and where the clips stop.

    Args:
        playback_logits: [S, N, K]; fused: [N, K]; labels: the clips' labels; confidence: [S, N].
        costs: :func:`playback_costs` (S + 1 values, the full forward's last).
    """
    num_playbacks = playback_logits.shape[0]
    exits = exit_playbacks(confidence, threshold)
    per_clip = _clip_costs(costs)[exits]
    counts = torch.bincount(exits, minlength=num_playbacks).double() / exits.numel()
    metrics = classification_metrics(anytime_logits(playback_logits, fused, exits), labels, label_space)
    return AnytimePoint(float(threshold), float(per_clip.mean()), float(per_clip.mean() / costs[-1]),
                        counts.tolist(), metrics)


def cost_curve(playback_logits: Tensor, fused: Tensor, labels: Tensor, label_space: LabelSpace,
               confidence: Tensor, costs: Sequence[float], thresholds: Sequence[float]) -> list[AnytimePoint]:
    """:func:`anytime_point` at every threshold, in the order given."""
    return [anytime_point(playback_logits, fused, labels, label_space, confidence, costs, t) for t in thresholds]


def calibrate_threshold(confidence: Tensor, costs: Sequence[float], target_fraction: float) -> float:
    """The largest threshold whose mean cost on these clips (the validation list) stays within ``target_fraction``
    of the full forward's (0 stops every clip after playback 0, the cheapest a policy can be; a threshold above every
    confidence runs every clip to the end).

    Args:
        confidence: [S, N] of the validation clips.
        costs: :func:`playback_costs`.
        target_fraction: the mean cost allowed, a fraction of the full forward's (e.g. 0.6).
    """
    candidates = torch.cat([torch.zeros(1), confidence[:-1].flatten().unique(), torch.full((1,), 1.0 + 1e-6)])
    best = 0.0
    for threshold in candidates.sort().values.tolist():
        per_clip = _clip_costs(costs)[exit_playbacks(confidence, threshold)]
        if float(per_clip.mean()) <= target_fraction * costs[-1]:
            best = threshold
    return float(best)

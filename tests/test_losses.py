"""Every loss term of playitback.losses against values computed by hand (logits chosen so that the softmax and sigmoid
probabilities are simple fractions: softmax([ln 3, 0]) = [3/4, 1/4], sigmoid(ln 3) = 3/4)."""
from __future__ import annotations

import math

import pytest
import torch

from playitback.data.labels import LabelSpace
from playitback.losses import (
    PlayItBackLoss,
    classification_loss,
    labels_to_targets,
    saliency_loss,
    true_class_score,
)
from playitback.models.output import ModelOutput

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_labels_become_one_hot_blocks_or_stay_multi_hot() -> None:
    assert labels_to_targets(torch.tensor([2, 0]), [3], False).tolist() == [[0, 0, 1], [1, 0, 0]]
    assert labels_to_targets(torch.tensor([[1, 0]]), [2, 3], False).tolist() == [[0, 1, 1, 0, 0]]
    multi_hot = torch.tensor([[1.0, 0.0, 1.0]])
    assert torch.equal(labels_to_targets(multi_hot, [3], True), multi_hot)


def test_cross_entropy_of_hard_and_soft_targets() -> None:
    logits = torch.tensor([[0.0, 0.0, LN2], [LN3, 0.0, 0.0]])  # probabilities [1/4, 1/4, 1/2] and [3/5, 1/5, 1/5]
    hard = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert classification_loss(logits, hard, [3], False).item() == pytest.approx((LN2 + math.log(5 / 3)) / 2)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])  # -(ln 1/4) and -(ln 1/5)
    assert classification_loss(logits, soft, [3], False).item() == pytest.approx((math.log(4) + math.log(5)) / 2)


def test_multitask_loss_averages_the_heads() -> None:
    # Verb head [ln 3, 0] with label 0: -ln 3/4; noun head [0, 0, ln 2] with label 2: -ln 1/2.
    logits = torch.tensor([[LN3, 0.0, 0.0, 0.0, LN2]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0]])
    assert classification_loss(logits, targets, [2, 3], False).item() == pytest.approx((math.log(4 / 3) + LN2) / 2)


def test_multi_label_loss_is_the_mean_binary_cross_entropy() -> None:
    logits = torch.tensor([[0.0, LN3]])  # sigmoid 1/2 (positive: -ln 1/2) and 3/4 (negative: -ln 1/4)
    assert classification_loss(logits, torch.tensor([[1.0, 0.0]]), [2], True).item() == pytest.approx(1.5 * LN2)


def test_true_class_score() -> None:
    assert true_class_score(torch.tensor([[0.0, 0.0, LN2]]), torch.tensor([[0.0, 0.0, 1.0]]), [3], False).tolist() \
        == pytest.approx([0.5])
    # Multitask: the mean over heads of the labelled class's probability, (3/4 + 1/2) / 2.
    assert true_class_score(torch.tensor([[LN3, 0.0, 0.0, 0.0, LN2]]), torch.tensor([[1.0, 0, 0, 0, 1.0]]), [2, 3],
                            False).tolist() == pytest.approx([0.625])
    # Multi-label: the mean sigmoid of the positives, (1/2 + 3/4) / 2; the negative class does not count.
    assert true_class_score(torch.tensor([[0.0, LN3, 5.0]]), torch.tensor([[1.0, 1.0, 0.0]]), [3], True).tolist() \
        == pytest.approx([0.625])


def _saliency_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two playbacks of one clip of class 0: playback 0's positive tokens beat its negative ones (3/4 against 1/2),
    playback 1's lose (1/2 against 3/4)."""
    pos = torch.tensor([[[LN3, 0.0]], [[0.0, 0.0]]], requires_grad=True)
    neg = torch.tensor([[[0.0, 0.0]], [[LN3, 0.0]]], requires_grad=True)
    return pos, neg, torch.tensor([[1.0, 0.0]])


def test_saliency_loss_is_the_positive_classification_plus_the_hinge() -> None:
    pos, neg, targets = _saliency_inputs()
    # Playback 0: -ln 3/4, contrast 1/4 clears the margin; playback 1: -ln 1/2, hinge 0.05 + 1/4.
    expected = (math.log(4 / 3) + LN2 + 0.3) / 2
    loss = saliency_loss(pos, neg, targets, [2], False, margin=0.05)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # The hinge is active only for playback 1, so only its negative logits get a gradient.
    assert neg.grad[0].abs().sum() == 0 and neg.grad[1].abs().sum() > 0
    assert pos.grad[0].abs().sum() > 0 and pos.grad[1].abs().sum() > 0
    # A margin above the playback-0 contrast makes its hinge count too: + (0.5 - 0.25) / 2.
    assert saliency_loss(pos, neg, targets, [2], False, margin=0.5).item() == pytest.approx(
        (math.log(4 / 3) + 0.25 + LN2 + 0.75) / 2)


def test_playitback_loss_weighs_its_terms() -> None:
    pos, neg, targets = _saliency_inputs()
    outputs = ModelOutput(
        logits=torch.tensor([[LN3, 0.0]]),                         # -ln 3/4
        features=torch.zeros(1, 4),
        playback_logits=torch.tensor([[[0.0, 0.0]], [[LN3, 0.0]]]),  # -ln 1/2 and -ln 3/4, summed
        pos_logits=pos, neg_logits=neg,
    )
    losses = PlayItBackLoss(LabelSpace((2,)), aux_weight=0.2, rank_weight=0.5, rank_margin=0.05)(outputs, targets)
    fused, aux, rank = math.log(4 / 3), LN2 + math.log(4 / 3), (math.log(4 / 3) + LN2 + 0.3) / 2
    assert {k: v.item() for k, v in losses.items()} == pytest.approx(
        {"loss": fused + 0.2 * aux + 0.5 * rank, "loss_fused": fused, "loss_aux": aux, "loss_saliency": rank})
    # The encoder alone has only the fused term.
    alone = PlayItBackLoss(LabelSpace((2,)))(ModelOutput(outputs.logits, outputs.features), targets)
    assert {k: v.item() for k, v in alone.items()} == pytest.approx({"loss": fused, "loss_fused": fused})

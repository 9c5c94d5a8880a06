"""Frame-evidence saliency (MIL), the fixed-budget selection, and the saliency loss terms, against hand-computed values
and slow references."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from playitback.data.labels import LabelSpace
from playitback.losses import PlayItBackLoss, evidence_loss, saliency_priors
from playitback.models.evidence import FrameEvidence, mil_pool
from playitback.models.output import ModelOutput
from playitback.models.saliency import saliency_mask, selection_weights

REPO = Path(__file__).resolve().parents[1]


def test_mil_pooling_by_hand() -> None:
    probs = torch.tensor([[[0.1, 1.0], [0.3, 0.0], [0.6, 0.0]]])  # [B=1, T=3, K=2]
    # Linear softmax: sum p^2 / sum p.
    want = torch.tensor([[(0.01 + 0.09 + 0.36) / 1.0, 1.0]])
    assert torch.allclose(mil_pool(probs, "linear_softmax"), want)
    # Auto-pool: alpha 0 is the mean over time, a large alpha approaches the max.
    assert torch.allclose(mil_pool(probs, "autopool", torch.zeros(2)), probs.mean(1))
    assert torch.allclose(mil_pool(probs, "autopool", torch.full((2,), 200.0)), probs.amax(1), atol=1e-4)
    # Attention: one weight per frame for every class.
    attention = torch.tensor([[0.5, 0.25, 0.25]])
    want = torch.tensor([[0.05 + 0.075 + 0.15, 0.5]])
    assert torch.allclose(mil_pool(probs, "attention", attention=attention), want)
    with pytest.raises(ValueError, match="MIL pooling"):
        mil_pool(probs, "max")


def test_attention_pooling_saliency_is_its_class_agnostic_frame_weights() -> None:
    """With attention pooling the saliency is the pooling's frame weights (min-max normalised): the same curve
    whatever the classifier says, so changing only the class weights changes the clip prediction, not where it looks."""
    torch.manual_seed(0)
    head = FrameEvidence(num_bins=32, num_classes=[5], width=16, pooling="attention").eval()
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        saliency, clip = head(x)
        features = head.features(((x - x.mean((1, 2), keepdim=True)) / x.std((1, 2), keepdim=True)).unsqueeze(1))
        hidden = F.gelu(head.project(features.permute(0, 2, 1, 3).flatten(2)))
        weights = torch.softmax(head.attend(hidden).squeeze(-1), dim=1)
        want = (weights - weights.amin(1, keepdim=True)) / (weights.amax(1, keepdim=True) - weights.amin(1, keepdim=True))
        assert torch.allclose(saliency, want, atol=1e-6)
        assert torch.allclose(clip, (torch.sigmoid(head.classify(hidden)) * weights.unsqueeze(-1)).sum(1), atol=1e-6)
        head.classify.weight.mul_(-3.0)
        saliency_after, clip_after = head(x)
    assert torch.equal(saliency, saliency_after) and not torch.allclose(clip, clip_after)


def test_evidence_scores_are_local_in_time() -> None:
    """A frame's score depends only on the frames around it (about 9), so the saliency can say *where*; and it does
    not depend on the recording level."""
    torch.manual_seed(0)
    head = FrameEvidence(num_bins=32, num_classes=[5], width=16).eval()
    spectrogram = torch.randn(1, 40, 32)
    changed = spectrogram.clone()
    changed[:, 30:] += 3 * torch.randn(1, 10, 32)
    with torch.no_grad():
        # Compare raw frame features before the per-sample normalisations (which are global by design).
        def frame_logits(x: torch.Tensor) -> torch.Tensor:
            features = head.features(x.unsqueeze(1)).permute(0, 2, 1, 3).flatten(2)
            return head.classify(F.gelu(head.project(features)))

        a, b = frame_logits(spectrogram), frame_logits(changed)
    # Receptive field of 3 frames: frame 28 does not see frame 30, frame 29 does.
    assert torch.equal(a[:, :29], b[:, :29]) and not torch.allclose(a[:, 29:], b[:, 29:])
    with pytest.raises(ValueError, match="odd"):
        FrameEvidence(num_bins=32, num_classes=[5], receptive_frames=4)
    saliency, clip = head(spectrogram)
    louder, clip_louder = head(spectrogram * 3.0 + 7.0)
    assert torch.allclose(saliency, louder, atol=1e-5) and torch.allclose(clip, clip_louder, atol=1e-5)
    assert saliency.shape == (1, 40) and clip.shape == (1, 5)
    assert saliency.amin() == 0 and saliency.amax() == 1


def test_evidence_head_learns_where_the_event_is() -> None:
    """Trained on clip labels only, the saliency peaks on the frames that carry the class (a band at a class-specific
    frequency at a random time, in noise): weak supervision finds the time."""
    torch.manual_seed(0)
    head = FrameEvidence(num_bins=16, num_classes=[3], width=16)
    optimiser = torch.optim.Adam(head.parameters(), lr=5e-3)

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.randn(size, 32, 16) * 0.5
        labels = torch.randint(0, 3, (size,))
        starts = torch.randint(0, 28, (size,))
        for b in range(size):
            band = 2 + 5 * int(labels[b])
            x[b, starts[b]: starts[b] + 4, band: band + 2] += 3.0
        return x, labels, starts

    for _ in range(160):
        x, labels, _ = batch(16)
        _, clip = head(x)
        loss = evidence_loss(clip.unsqueeze(0), F.one_hot(labels, 3).float())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    head.eval()
    x, labels, starts = batch(64)
    with torch.no_grad():
        saliency, clip = head(x)
    events = (torch.arange(32) >= starts[:, None]) & (torch.arange(32) < starts[:, None] + 4)
    selected = saliency_mask(saliency, budget=4 / 32)  # the 4 most salient frames of each clip
    precision = (selected & events).sum() / selected.sum()
    assert precision > 0.7, precision  # chance: 4 of 32 frames, 0.125
    assert (clip.argmax(1) == labels).float().mean() > 0.8


def test_every_class_starts_at_its_task_prior() -> None:
    head = FrameEvidence(num_bins=32, num_classes=[4, 10], width=8)
    with torch.no_grad():
        head.classify.weight.zero_()  # the frame scores are then the initial biases alone
    _, clip = head(torch.randn(2, 6, 32))
    assert torch.allclose(clip, torch.tensor([0.25] * 4 + [0.1] * 10).expand(2, -1), atol=1e-6)


def test_every_evidence_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    head = FrameEvidence(num_bins=32, num_classes=[3, 4], width=8, pooling="autopool")
    _, clip = head(torch.randn(2, 12, 32))
    evidence_loss(clip.unsqueeze(0), torch.rand(2, 7)).backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="multiple of 16"):
        FrameEvidence(num_bins=24, num_classes=[3])


def test_fixed_budget_selection_by_hand() -> None:
    saliency = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0], [1.0, 0.0, 0.0, 0.0, 0.5]])
    # Budget 0.4 of 5 frames: the 2 most salient frames of every row.
    assert saliency_mask(saliency, 0.4).tolist() == [[False, True, False, True, False],
                                                      [True, False, False, False, True]]
    # Budget 0: above the mean (row 0 mean 0.42: frames 1 and 3; row 1 mean 0.3: frames 0 and 4).
    assert saliency_mask(saliency).tolist() == saliency_mask(saliency, 0.4).tolist()
    assert saliency_mask(saliency, 0.01).sum(1).tolist() == [1, 1]  # at least one frame
    weights = selection_weights(saliency, 0.4, temperature=0.01)
    # Threshold halfway between the 2nd and 3rd values: 0.55 and 0.25.
    assert torch.allclose(weights, saliency_mask(saliency, 0.4).float(), atol=1e-6)
    assert torch.equal(selection_weights(saliency), saliency)
    assert torch.equal(selection_weights(saliency, 1.0), torch.ones(2, 5))


def test_soft_top_k_passes_gradients_to_the_saliency() -> None:
    saliency = torch.tensor([[0.1, 0.9, 0.5, 0.45, 0.0]], requires_grad=True)
    weights = selection_weights(saliency, 0.4, temperature=0.1)
    weights[0, 3].backward()  # frame 3 sits just under the threshold (0.475)
    assert saliency.grad[0, 3] > 0 and saliency.grad.abs().sum() == saliency.grad[0, 3].abs()


def test_loss_terms_by_hand() -> None:
    probs = torch.tensor([[[0.8, 0.1]], [[0.6, 0.3]]])  # [S=2, B=1, K=2]
    targets = torch.tensor([[1.0, 0.0]])
    want = -(torch.log(torch.tensor([0.8, 0.9, 0.6, 0.7]))).mean()
    assert torch.allclose(evidence_loss(probs, targets), want)
    saliency = torch.tensor([[[0.0, 1.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]]])  # [B=1, S=2, T0=4]
    area, contiguity = saliency_priors(saliency, budget=0.25)
    assert torch.allclose(area, torch.tensor(((0.5 - 0.25) ** 2 + (0.5 - 0.25) ** 2) / 2))
    assert torch.allclose(contiguity, torch.tensor((1 + 0 + 1 + 0 + 0 + 0) / 6))


def test_playitback_loss_picks_the_objective_and_adds_the_priors() -> None:
    targets = torch.tensor([[0.0, 1.0, 0.0]])
    logits = torch.tensor([[0.2, 1.0, -0.5]])
    outputs = ModelOutput(logits, torch.zeros(1, 4), playback_logits=logits[None].expand(2, -1, -1),
                          evidence_probs=torch.tensor([[[0.2, 0.7, 0.1]]]).expand(2, -1, -1),
                          saliency=torch.tensor([[[0.0, 1.0], [1.0, 1.0]]]))
    loss = PlayItBackLoss(LabelSpace((3,)), aux_weight=0.1, rank_weight=0.5, area_weight=2.0,
                          contiguity_weight=3.0, budget=0.5, saliency_objective="mil",
                          saliency_fields=("evidence_probs",))
    terms = loss(outputs, targets)
    ce = F.cross_entropy(logits, torch.tensor([1]))
    area, contiguity = saliency_priors(outputs.saliency, 0.5)
    want = ce + 0.1 * 2 * ce + 0.5 * evidence_loss(outputs.evidence_probs, targets) + 2 * area + 3 * contiguity
    assert torch.allclose(terms["loss"], want)
    assert set(terms) == {"loss", "loss_fused", "loss_aux", "loss_saliency", "loss_area", "loss_contiguity"}


@pytest.mark.parametrize("freeze", [True, False])
def test_playitback_with_evidence_trains_every_trainable_parameter(freeze: bool) -> None:
    """DDP needs no find_unused_parameters: every trainable parameter gets a non-zero gradient (the encoder's head,
    which the evidence objective does not use, is frozen)."""
    from engine_utils import TINY_MODEL
    from playitback.config import load_config
    from playitback.engine.build import build_loss
    from playitback.models import build_model

    cfg = load_config(REPO / "configs/Demo/PlayItBackX2.yaml",
                      ["NUM_GPUS", "0", *TINY_MODEL, "SALIENCY.METHOD", "evidence", "SALIENCY.BUDGET", "0.25",
                       "MODEL.FREEZE_ENCODER", str(freeze)])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    playbacks = [torch.randn(3, 16 * (i + 1), 128) for i in range(3)]
    outputs = model(playbacks)
    assert outputs.replay_masks.sum(-1).tolist() == [[4, 4]] * 3  # 0.25 of 16 frames
    loss = build_loss(cfg, LabelSpace((4,)))(outputs, F.one_hot(torch.tensor([0, 1, 3]), 4).float())["loss"]
    loss.backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable), [
        name for name, p in trainable if p.grad is None or not p.grad.abs().sum()]
    assert not any(p.requires_grad for p in model.encoder.head.parameters())
    assert any(p.requires_grad for p in model.encoder.parameters()) == (not freeze)

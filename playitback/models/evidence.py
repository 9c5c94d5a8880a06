"""Frame-level evidence saliency: where in time the class evidence is, from local features, trained by multiple-instance
learning (MIL) on clip labels.

Why: a saliency that weights the encoder's tokens cannot find where the evidence came from, because global attention
has already spread the class evidence over every token row (docs/method.md §7). This head never looks at the tokens.
A small convolutional network reads the composite spectrogram itself, so each frame's score depends only on the
frames around it (``receptive_frames``, 3 by default); it predicts per-frame class probabilities, and a MIL pooling
over time turns them into a clip prediction trained with the clip's label (weakly supervised sound event detection:
Wang, Li & Metze, "A comparison of five multiple instance learning pooling functions for sound event detection with
weak labeling", ICASSP 2019, for linear softmax; McFee, Salamon & Bello, "Adaptive pooling operators for weakly
labeled sound event detection", TASLP 2018, for auto-pool). The frames that make the clip prediction are the ones
that carry the evidence, so the saliency is the frame probability of the predicted classes.

Shape legend: B batch, T0 frames, F mel bins, K classes (tasks concatenated), C channels, H hidden width.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import Tensor, nn

from playitback.config import derived
from playitback.config.choices import MIL_POOLINGS
from playitback.models.saliency import normalise_per_sample
from playitback.models.saliency_interface import PlaybackView, Saliency

__all__ = ["MIL_POOLINGS", "FrameEvidence", "mil_pool"]



def mil_pool(frame_probs: Tensor, pooling: str, alpha: Tensor | None = None,
             attention: Tensor | None = None) -> Tensor:
    """Pool frame probabilities into clip probabilities.

    Args:
        frame_probs: per-frame class probabilities in [0, 1], [B, T0, K].
        pooling: "linear_softmax": ``sum_t p^2 / sum_t p`` (each frame weighted by its own probability);
            "autopool": ``sum_t p * softmax_t(alpha * p)`` with a learned per-class ``alpha`` (0: mean, large: max);
            "attention": ``sum_t a_t p_t`` with one class-agnostic weight per frame (Ilse, Tomczak & Welling,
            "Attention-based deep multiple instance learning", ICML 2018).
        alpha: [K], for "autopool".
        attention: frame weights [B, T0] summing to 1 over time, for "attention".

    Returns:
        Clip probabilities in [0, 1], [B, K].
    """
    if pooling == "linear_softmax":
        return (frame_probs * frame_probs).sum(1) / frame_probs.sum(1).clamp_min(1e-7)
    if pooling == "autopool":
        weights = torch.softmax(alpha * frame_probs, dim=1)
        return (frame_probs * weights).sum(1)
    if pooling == "attention":
        return (frame_probs * attention.unsqueeze(-1)).sum(1)
    raise ValueError(f"MIL pooling must be one of {MIL_POOLINGS}, got {pooling!r}")


class FrameEvidence(Saliency):
    """Per-frame class evidence of a spectrogram and the saliency curve it implies.

    Args:
        num_bins: mel bins F of the input.
        num_classes: classes per task (K = their sum); every class is scored with its own sigmoid.
        width: hidden width H of the per-frame features.
        pooling: MIL pooling over time, one of :data:`MIL_POOLINGS`. With "attention" the saliency is the frame
            weights of the pooling, one per frame for every class: class-agnostic, so where it replays is not a
            function of the predicted class (the control for a class side channel in the replay's position).
        receptive_frames: frames (odd) that one frame's score sees. It must stay shorter than the events: MIL only
            asks that *some* frames explain the clip label, so with a wide field the evidence can fire on frames
            next to the event (measured on a toy task with 4-frame events: top-4 precision 1.00 with 3 frames,
            0.34 with 9).
    """

    def __init__(self, num_bins: int, num_classes: Sequence[int], width: int = 64,
                 pooling: str = "linear_softmax", receptive_frames: int = 3) -> None:
        super().__init__()
        if pooling not in MIL_POOLINGS:
            raise ValueError(f"FrameEvidence: pooling must be one of {MIL_POOLINGS}, got {pooling!r}")
        if num_bins < 16 or num_bins % 16:
            raise ValueError(f"FrameEvidence: num_bins must be a multiple of 16 (three frequency poolings), got "
                             f"{num_bins}")
        if receptive_frames < 1 or receptive_frames % 2 == 0:
            raise ValueError(f"FrameEvidence: receptive_frames must be odd and positive, got {receptive_frames}")
        self.pooling = pooling
        total = int(sum(num_classes))
        channels = (16, 32, 64)
        layers: list[nn.Module] = []
        in_channels = 1
        # Only the first convolution looks along time (receptive_frames); frequency is pooled (by 2, 2, 4) but
        # time never is, so every frame keeps its own feature. No normalisation layer: a norm over time would make
        # every frame's score depend on the whole clip.
        for index, (out_channels, pool) in enumerate(zip(channels, (2, 2, 4))):
            time_kernel = receptive_frames if index == 0 else 1
            layers += [nn.Conv2d(in_channels, out_channels, (time_kernel, 3), padding=(time_kernel // 2, 1)),
                       nn.GELU(), nn.AvgPool2d((1, pool))]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.project = nn.Linear(channels[-1] * (num_bins // 16), width)
        self.classify = nn.Linear(width, total)
        # Every class starts at probability 1/K of its task (the prior trick of focal loss, Lin et al. 2017): from
        # probability 0.5 the frame scores would first all be pushed down together, a plateau that cost about 100
        # steps on the demo data (loss at the prior's 0.377 for steps 0-100, against 50 steps to reach 0.21 with it).
        with torch.no_grad():
            self.classify.bias.copy_(torch.cat([torch.full((int(k),), -math.log(max(int(k) - 1, 1)))
                                                for k in num_classes]))
        self.alpha = nn.Parameter(torch.ones(total)) if pooling == "autopool" else None
        self.attend = nn.Linear(width, 1) if pooling == "attention" else None

    # Multiple-instance learning (playitback.losses.evidence_loss) on the clip probabilities; the encoder's head is
    # not read.
    objective = "mil"
    objective_fields = ("evidence_probs",)
    reads_encoder_head = False

    @classmethod
    def from_config(cls, cfg: CfgNode, token_dim: int) -> FrameEvidence:
        """The head of SALIENCY.EVIDENCE_* (it reads the spectrogram, so ``token_dim`` is not used)."""
        sal = cfg.SALIENCY
        return cls(cfg.AUDIO_DATA.NUM_FREQUENCIES, derived.class_counts(cfg), width=sal.EVIDENCE_DIM,
                   pooling=sal.MIL_POOLING, receptive_frames=sal.EVIDENCE_FRAMES)

    def score(self, view: PlaybackView) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The evidence curve of the composite and its MIL clip probabilities [B, K]."""
        saliency, clip_probs = self(view.composite)
        return saliency, (clip_probs,)

    def forward(self, spectrogram: Tensor) -> tuple[Tensor, Tensor]:
        """Score every frame.

        Args:
            spectrogram: log-mel [B, T0, F] (the composite a playback's encoder pass reads).

        Returns:
            ``(saliency, clip_probs)``: saliency [B, T0] in [0, 1] (the frame probabilities of the classes the clip
            is predicted to hold, weighted by those predictions, or with "attention" pooling the frame weights;
            min-max normalised per sample; all zeros if constant) and the MIL clip probabilities [B, K] that the
            saliency objective trains.
        """
        if spectrogram.dim() != 3:
            raise ValueError(f"FrameEvidence: spectrogram must be [B, T0, F], got {tuple(spectrogram.shape)}")
        # Per-sample standardisation: the scores must not depend on the recording level.
        mean = spectrogram.mean(dim=(1, 2), keepdim=True)
        std = spectrogram.std(dim=(1, 2), keepdim=True).clamp_min(1e-5)
        x = self.features(((spectrogram - mean) / std).unsqueeze(1))  # [B, C, T0, F / 16]
        x = x.permute(0, 2, 1, 3).flatten(2)  # [B, T0, C * F / 16], frequency position kept
        x = F.gelu(self.project(x))  # [B, T0, H]
        frame_probs = torch.sigmoid(self.classify(x).float())  # [B, T0, K]
        if self.attend is not None:
            attention = torch.softmax(self.attend(x).squeeze(-1).float(), dim=1)  # [B, T0]
            return normalise_per_sample(attention), mil_pool(frame_probs, self.pooling, attention=attention)
        clip_probs = mil_pool(frame_probs, self.pooling, self.alpha)
        # Label-free, so training and evaluation select frames the same way.
        weights = clip_probs.detach()
        curve = (frame_probs * weights.unsqueeze(1)).sum(-1) / weights.sum(-1, keepdim=True).clamp_min(1e-7)
        return normalise_per_sample(curve), clip_probs

"""What every model returns: one typed record, its fields None where a model has no such output.

Shape legend: B batch, K outputs (all tasks), D feature width, S playbacks, T0 frames of playback 0, F mel bins.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.export
from torch import Tensor


@dataclass
class ModelOutput:
    """A forward pass.

    Attributes:
        logits: [B, K] the prediction (PlayItBack: fused over the playbacks).
        features: [B, D] the embedding (fused decoder features, or the encoder's mean token).
        playback_logits: [S, B, K] the decoder's prediction from each playback alone (PlayItBack).
        pos_logits, neg_logits: [S, B, K] encoder-head logits of the saliency-pooled and complement-pooled tokens
            (the slot saliency's objective).
        evidence_probs: [S, B, K] the frame-evidence saliency's MIL clip probabilities (its objective).
        saliency: [B, S, T0] in [0, 1] over the frames of each composite.
        replay_masks: bool [B, S - 1, T0], the frames of composite i replayed from playback i + 1.
        composites: [B, S, T0, F] the input of each playback's encoder pass (composite 0 = playback 0).
        frame_times: [B, S, T0] the source time of every composite frame, in frames of playback 0.
    """

    logits: Tensor
    features: Tensor
    playback_logits: Tensor | None = None
    pos_logits: Tensor | None = None
    neg_logits: Tensor | None = None
    evidence_probs: Tensor | None = None
    saliency: Tensor | None = None
    replay_masks: Tensor | None = None
    composites: Tensor | None = None
    frame_times: Tensor | None = None

    @property
    def has_replay(self) -> bool:
        """Whether the model replayed segments (PlayItBack), so replay_masks and frame_times are set."""
        return self.replay_masks is not None

    def float(self) -> ModelOutput:
        """The same outputs with every floating tensor in float32 (after autocast), the rest as they are."""
        return dataclasses.replace(self, **{
            f.name: value.float() for f in dataclasses.fields(self)
            if isinstance(value := getattr(self, f.name), Tensor) and value.is_floating_point()
        })


# A pytree node, so torch.compile, torch.export and DDP see the tensors inside.
torch.export.register_dataclass(ModelOutput, serialized_type_name="playitback.ModelOutput")


@dataclass
class AnytimeOutput:
    """What :meth:`playitback.models.PlayItBack.forward_anytime` returns: each clip's prediction at the playback it
    stopped after.

    Attributes:
        logits: [B, K] the logits of the playback each clip stopped after (``playback_logits[p]``), the fused logits
            for a clip that ran every playback.
        features: [B, L] the matching reduced decoder features (the fused features at the last playback).
        exits: int64 [B] the playback each clip stopped after (S - 1: it ran every playback).
    """

    logits: Tensor
    features: Tensor
    exits: Tensor

"""PlayItBack: encode, find the salient time segments, replay them at a finer hop, repeat; fuse every playback.

Shape legend: B batch, S playbacks, T0 frames of playback 0, F mel bins, T''/F'' the encoder's token grid, D token
width, K total classes (tasks concatenated).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from playitback.models.mvit import MViT
from playitback.models.replay import replay
from playitback.models.saliency import TemporalSaliency, saliency_contrast, saliency_mask
from playitback.models.tempr import TemPr


def _tokens_on_grid(encoder: MViT, spectrogram: Tensor) -> Tensor:
    """[B, T, F] -> encoder tokens on their (time, frequency) grid [B, T'', F'', D]."""
    tokens, (grid_t, grid_f) = encoder.forward_features(spectrogram.unsqueeze(1))
    return tokens.reshape(tokens.shape[0], grid_t, grid_f, tokens.shape[-1])


class EncoderClassifier(nn.Module):
    """The encoder alone (MODEL.PLAYBACK 0): the pretraining stage and the baseline PlayItBack is compared with.

    With `freeze_backbone` only the classifier head trains (a linear probe) and the backbone runs in eval mode.
    """

    def __init__(self, encoder: MViT, freeze_backbone: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            for name, param in encoder.named_parameters():
                param.requires_grad_(name.startswith("head."))

    def train(self, mode: bool = True) -> "EncoderClassifier":
        super().train(mode)
        if self.freeze_backbone:
            self.encoder.eval()
            self.encoder.head.train(mode)
        return self

    def forward(self, playbacks: Sequence[Tensor]) -> dict[str, Tensor]:
        """playbacks[0]: [B, T0, F] -> {"logits": [B, K], "features": mean-pooled tokens [B, D]}."""
        tokens, _ = self.encoder.forward_features(playbacks[0].unsqueeze(1))
        return {"logits": self.encoder.forward_head(tokens), "features": tokens.mean(1)}


class PlayItBack(nn.Module):
    """Encoder -> per-playback temporal saliency -> replay of the salient runs at the next playback -> TemPr decoder.

    For playback i the encoder reads the running composite C_i ([B, T0, F]; C_0 is playback 0). Its tokens feed the
    decoder layer i and the saliency module i. The saliency's salient runs of C_i are replaced by the same time span of
    playback i+1 (i+2 times as many frames as playback 0) and the result is resized back to T0 frames: C_{i+1}.
    Everything is fixed-shape tensor code with no host synchronisation, so the forward compiles as one graph.

    A frozen encoder (its parameters have requires_grad False) runs in eval mode and without autograd; the saliency
    still trains, because the pooled positive/negative tokens go through the encoder head with gradients.
    """

    def __init__(self, encoder: MViT, saliency: Sequence[TemporalSaliency], decoder: TemPr,
                 freeze_encoder: bool = True) -> None:
        super().__init__()
        if len(saliency) < 2:
            raise ValueError(f"PlayItBack needs at least 2 playbacks (one saliency module each), got {len(saliency)}; "
                             "use EncoderClassifier for the encoder alone")
        self.encoder = encoder
        # The original's module name, so that its checkpoints load.
        self.saliency_slots = nn.ModuleList(saliency)
        self.decoder = decoder
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            encoder.requires_grad_(False)

    @property
    def num_playbacks(self) -> int:
        return len(self.saliency_slots)

    def train(self, mode: bool = True) -> "PlayItBack":
        super().train(mode)
        if self.freeze_encoder:
            # No drop path or dropout on frozen features (the original left them on).
            self.encoder.eval()
        return self

    def forward(self, playbacks: Sequence[Tensor], replay_masks: Tensor | None = None) -> dict[str, Tensor]:
        """Run every playback.

        Args:
            playbacks: S tensors [B, T0 * (i + 1), F].
            replay_masks: bool [B, T0]: replay these frames at every playback instead of the salient ones (e.g. the
                annotated event frames, an oracle); None: the saliency decides.

        Returns:
            "logits" [B, K] fused; "playback_logits" [S, B, K]; "features" [B, latent_dim] fused decoder features;
            "pos_logits", "neg_logits" [S, B, K] encoder-head logits of the saliency-pooled and complement-pooled
            tokens; "saliency" [B, S, T0] in [0, 1]; "replay_masks" bool [B, S - 1, T0], the frames of C_i replayed
            from playback i + 1.
        """
        if len(playbacks) != self.num_playbacks:
            raise ValueError(f"expected {self.num_playbacks} playbacks, got {len(playbacks)}")
        composite = playbacks[0]
        tokens, saliencies, masks, pos_logits, neg_logits = [], [], [], [], []
        for i, saliency_module in enumerate(self.saliency_slots):
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
                grid_tokens = _tokens_on_grid(self.encoder, composite)
            saliency, _ = saliency_module(grid_tokens)
            positive, negative = saliency_contrast(grid_tokens, saliency)
            pos_logits.append(self.encoder.forward_head(positive.unsqueeze(1)))
            neg_logits.append(self.encoder.forward_head(negative.unsqueeze(1)))
            tokens.append(grid_tokens)
            saliencies.append(saliency)
            if i + 1 < self.num_playbacks:
                mask = saliency_mask(saliency) if replay_masks is None else replay_masks
                masks.append(mask)
                composite = replay(composite, playbacks[i + 1], mask, ratio=i + 2)
        decoded = self.decoder(tokens)
        return {
            "logits": decoded["logits"],
            "playback_logits": decoded["playback_logits"],
            "features": decoded["features"],
            "pos_logits": torch.stack(pos_logits),
            "neg_logits": torch.stack(neg_logits),
            "saliency": torch.stack(saliencies, dim=1),
            "replay_masks": torch.stack(masks, dim=1),
        }

"""What every encoder provides: the interface PlayItBack, the saliencies, the optimiser and the exporter rely on.

An encoder reads a log-mel spectrogram ``[B, 1, T, F]`` and returns tokens on a (time, frequency) grid. PlayItBack
needs to know where each token row sits in time (:class:`TokenRows`) to turn token saliency into frame saliency, its
width ``num_features`` for the decoder, and a classifier ``head`` for the encoder-alone stage and the slot saliency's
pooled tokens. Every encoder standardises its own input with :class:`InputNorm` and numbers its layers for layer-wise
LR decay. ``tests/test_encoders.py`` checks all of this once for every registered encoder (``ENCODER.NAME``, see
:mod:`playitback.registry`).

Shape legend: B batch, T input frames, F mel bins, T''/F'' the token grid, N = T'' * F'' tokens, D width, K classes
(tasks concatenated).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from playitback.config.choices import CLIP_NORMS

Grid = tuple[int, int]


@dataclass(frozen=True)
class TokenRows:
    """Where the encoder's token rows sit on the input's time axis: row t is centred on input frame
    ``offset + stride * t`` (the patch convolution and every query pooling, composed; a row covers ``stride`` frames).

    Attributes:
        stride: input frames between consecutive token rows.
        offset: input frame on which row 0 is centred.
    """

    stride: float
    offset: float

    def centres(self, rows: int, device: torch.device | str | None = None) -> Tensor:
        """Centres of ``rows`` token rows in input frames, float32 [rows]."""
        return self.offset + self.stride * torch.arange(rows, device=device, dtype=torch.float32)

    def after_conv(self, kernel: int, stride: int, padding: int) -> TokenRows:
        """The rows after a convolution or pooling along time: output row q reads input rows
        ``q * stride - padding ... + kernel - 1``, so it is centred on input row
        ``q * stride - padding + (kernel - 1) / 2``."""
        return TokenRows(self.stride * stride, self.offset + self.stride * (-padding + (kernel - 1) / 2))


def init_weights(module: nn.Module, conv: bool = False) -> None:
    """ViT/MViTv2 init: trunc-normal(0.02) Linear weights (and convolutions with ``conv``) with zero bias, unit
    LayerNorm; other modules keep PyTorch's defaults. Use as ``model.apply(init_weights)``."""
    if isinstance(module, nn.Linear) or (conv and isinstance(module, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class InputNorm(nn.Module):
    """The standardisation every encoder applies to its input: ``(x - mean) / std`` (the training set's statistics,
    AUDIO_DATA.NORM_MEAN/NORM_STD), then ``clip_norm`` per sample: "none", "mean" (subtract the clip's mean: level
    invariance) or "mean_std" (also divide by the clip's standard deviation).

    The statistics are buffers outside the state dict, so checkpoints do not depend on them.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0, clip_norm: str = "none") -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"input_std must be positive, got {std}")
        if clip_norm not in CLIP_NORMS:
            raise ValueError(f"clip_norm must be one of {CLIP_NORMS}, got {clip_norm!r}")
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)
        self.clip_norm = clip_norm

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, C, T, F]`` -> the standardised tensor of the same shape."""
        x = (x - self.mean) / self.std
        if self.clip_norm == "none":
            return x
        x = x - x.mean(dim=(2, 3), keepdim=True)
        if self.clip_norm == "mean_std":
            x = x / x.std(dim=(2, 3), keepdim=True).clamp_min(1e-5)
        return x


class Encoder(nn.Module):
    """Base class of the encoders.

    A subclass sets, in its ``__init__``: ``input_norm`` (an :class:`InputNorm`), ``token_rows`` (a
    :class:`TokenRows`), ``num_features`` (D), ``num_classes`` (classes per task) and ``head`` (one module, or a
    ModuleList of one per task, mapping ``[B, D] -> [B, K_task]``); and implements :meth:`forward_features`,
    :meth:`layer_id` and :attr:`num_layers`. It may override :meth:`pool` (how a set of tokens becomes one vector)
    and :meth:`classify` (how the encoder alone classifies a clip, e.g. from a summary token).
    """

    input_norm: InputNorm
    token_rows: TokenRows
    num_features: int
    num_classes: list[int]
    head: nn.Module

    def forward_features(self, x: Tensor) -> tuple[Tensor, Grid]:
        """Encode a spectrogram.

        Args:
            x: ``[B, 1, T, F]`` (time is the image height, frequency the width), before standardisation.

        Returns:
            Tokens ``[B, T'' * F'', D]``, time-major with the frequency index fastest (token ``t * F'' + f`` sits at
            grid cell ``(t, f)``; no summary tokens), and the grid ``(T'', F'')``.
        """
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        """L: layer ids run from 0 (the embeddings) to L + 1 (the final norm and the head)."""
        raise NotImplementedError

    def layer_id(self, name: str) -> int:
        """The layer (0 .. num_layers + 1) of the parameter ``name`` (relative to the encoder), for layer decay."""
        raise NotImplementedError

    def pool(self, tokens: Tensor) -> Tensor:
        """``[B, N, D] -> [B, D]``: the mean token."""
        return tokens.mean(dim=1)

    def forward_head(self, tokens: Tensor) -> Tensor:
        """Classify a set of tokens: ``[B, N, D]`` -> logits ``[B, K]`` (the heads of every task on :meth:`pool`,
        concatenated; never a softmax)."""
        pooled = self.pool(tokens)
        heads = self.head if isinstance(self.head, nn.ModuleList) else (self.head,)
        return torch.cat([head(pooled) for head in heads], dim=-1)

    def classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder alone on a spectrogram ``[B, 1, T, F]``: ``(logits [B, K], features [B, D])``."""
        tokens, _ = self.forward_features(x)
        return self.forward_head(tokens), self.pool(tokens)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, K]`` of a spectrogram ``[B, 1, T, F]``."""
        return self.classify(x)[0]

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError naming the expected layout unless ``x`` is ``[B, 1, T, F]``."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"{type(self).__name__} expects a spectrogram [B, 1, T, F], got shape "
                             f"{tuple(x.shape)}; add the channel dimension with x.unsqueeze(1)")

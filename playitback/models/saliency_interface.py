"""What every saliency provides: one signature for PlayItBack, a declared objective for the loss.

A saliency scores, for one playback, how much each frame of the composite should be replayed at the next playback.
It may read the composite spectrogram, the encoder's tokens on their grid and the encoder's head
(:class:`PlaybackView`); it returns the saliency curve and the inputs of the objective that trains it. Those inputs
are fields of :class:`~playitback.models.output.ModelOutput` that the class declares (``objective_fields``); the
loss named by ``objective`` (a key of :data:`playitback.losses.SALIENCY_OBJECTIVES`) reads exactly those fields.
Registered by name in :mod:`playitback.registry` (``SALIENCY.METHOD``); ``tests/test_saliencies.py`` checks every
registered saliency against this contract.

Shape legend: B batch, T0 frames of the composite, F mel bins, T''/F'' the token grid, D token width, K classes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from fvcore.common.config import CfgNode
from torch import Tensor, nn

from playitback.models.encoder import TokenRows


@dataclass(frozen=True)
class PlaybackView:
    """What a saliency may read of one playback.

    Attributes:
        composite: the spectrogram the encoder read, [B, T0, F].
        tokens: the encoder's tokens on their grid, [B, T'', F'', D].
        token_rows: where the token rows sit in the composite's frames.
        head: the encoder's classifier of a token set, ``[B, N, D] -> [B, K]`` (``Encoder.forward_head``).
        budget: the share of frames that will be replayed (SALIENCY.BUDGET; 0: those above the mean saliency).
    """

    composite: Tensor
    tokens: Tensor
    token_rows: TokenRows
    head: Callable[[Tensor], Tensor]
    budget: float


class Saliency(nn.Module):
    """Base class of the saliencies.

    Class attributes a subclass sets:
        objective: the loss that trains it, a key of :data:`playitback.losses.SALIENCY_OBJECTIVES`.
        objective_fields: the ModelOutput fields :meth:`score` returns values for, in order; PlayItBack stacks
            each over the playbacks into ``[S, B, ...]``.
        reads_encoder_head: whether the objective's inputs go through the encoder's head (else a fine-tuned
            encoder's head is frozen: it would get no gradient, which DDP refuses).
    """

    objective: ClassVar[str]
    objective_fields: ClassVar[tuple[str, ...]]
    reads_encoder_head: ClassVar[bool]

    @classmethod
    def from_config(cls, cfg: CfgNode, token_dim: int) -> Saliency:
        """The saliency of SALIENCY.* for encoder tokens of width ``token_dim``."""
        raise NotImplementedError

    def score(self, view: PlaybackView) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(saliency [B, T0] in [0, 1], one tensor per objective field, each [B, ...])``; deterministic in eval
        mode."""
        raise NotImplementedError

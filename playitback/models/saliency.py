"""Learnable temporal saliency: two-slot attention over the temporal profile of the encoder tokens.

One `TemporalSaliency` per playback reads the encoder tokens on their true (T'', F'') grid, averages over frequency to
get a temporal profile, and lets two slots compete for the D feature channels, each channel seen as a temporal vector.
Slot 0 is the "positive" slot and slot 1 the "negative" one. The readout turns them into a curve over time: by default
the mean (normalised) profile of the channels the positive slot attends to minus that of the negative slot
("attention"), or the original's slot 0 minus slot 1 ("slots"); min-max normalised per sample it is a soft saliency
curve s in [0, 1] over the T0 frames of playback 0.

Why this is trainable (the original's slots never received a gradient: its loss did not depend on them): the hard mask that drives the
replay (`saliency_mask`) is not differentiable, so the learning signal goes through the *soft* curve instead.
`saliency_contrast` pools the tokens with weights s (positive) and 1 - s (negative); the model passes both pooled
vectors through the encoder's classifier head *with gradients* (the head may be frozen: frozen weights still pass
gradients to their input), and the loss adds a cross-entropy on the positive-pooled logits and a margin ranking that
asks the true-class score of the positive pooling to beat the negative one. Every saliency parameter (the position
embedding, slots_mu, slots_sigma, to_q/k/v, the GRU, fc1/fc2 and the three norms) then gets a gradient through s.

Slot initialisation: slot k starts at ``mu + |sigma| * (anchor_k + noise)`` in training and at its mean
``mu + |sigma| * anchor_k`` in eval mode. The anchors are a fixed per-slot N(0, 1) draw (seeded, not a parameter and
not in the state dict, so original checkpoints load unchanged). They are needed because mu and sigma are shared by
both slots: with a zero or purely random offset the two slots would be identical in eval mode (the saliency would be
constant for every input) and exchangeable in training (which slot is "positive" would be a coin flip per forward).

Nothing in a forward calls ``.item()``, ``.nonzero()`` or ``.tolist()`` or branches on tensor values, and no shape
depends on the data.

Shape legend: B batch, T'' and F'' encoder token grid (time, frequency), D token width, T0 frames of playback 0,
K slots, N set size, W slot width (the slot resolution).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import Tensor, nn

from playitback.config import derived
from playitback.config.choices import READOUTS
from playitback.models.encoder import TokenRows
from playitback.models.saliency_interface import PlaybackView, Saliency

__all__ = [
    "SlotAttention",
    "SoftPositionEmbed",
    "TemporalSaliency",
    "masked_token_pool",
    "normalise_per_sample",
    "row_frame_weights",
    "saliency_contrast",
    "budget_frames",
    "saliency_mask",
    "selection_weights",
    "temporal_profile",
]

# Seed of the fixed per-slot anchors: a constant so that eval outputs are reproducible across runs and machines.
_ANCHOR_SEED = 0


class SlotAttention(nn.Module):
    """Slot attention (Locatello et al., 2020) with the original PlayItBack parameter names.

    Parameters: ``slots_mu``, ``slots_sigma`` (1, 1, dim); ``to_q``, ``to_k``, ``to_v`` (Linear dim -> dim with bias);
    ``gru`` (GRUCell dim -> dim); ``fc1`` (dim -> hidden_dim), ``fc2`` (hidden_dim -> dim); ``norm_input``,
    ``norm_slots``, ``norm_pre_ff`` (LayerNorm dim).

    Args:
        num_slots: number of slots K.
        dim: width W of the inputs and of the slots.
        iters: number of attention iterations.
        eps: added to the attention weights before they are renormalised over the inputs.
        hidden_dim: width of the residual MLP.
    """

    def __init__(self, num_slots: int = 2, dim: int = 400, iters: int = 3, eps: float = 1e-8, hidden_dim: int = 400):
        super().__init__()
        if num_slots < 1 or dim < 1 or iters < 1 or hidden_dim < 1:
            raise ValueError(
                f"SlotAttention: num_slots, dim, iters and hidden_dim must be >= 1, got {num_slots}, {dim}, {iters}, "
                f"{hidden_dim}"
            )
        self.num_slots = num_slots
        self.dim = dim
        self.iters = iters
        self.eps = eps
        self.scale = dim**-0.5
        # |N(0, 1)| as in the original, so that freshly built and original checkpoints start alike.
        self.slots_mu = nn.Parameter(torch.randn(1, 1, dim).abs())
        self.slots_sigma = nn.Parameter(torch.randn(1, 1, dim).abs())
        anchor_generator = torch.Generator().manual_seed(_ANCHOR_SEED)
        self.register_buffer("anchor", torch.randn(1, num_slots, dim, generator=anchor_generator), persistent=False)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.gru = nn.GRUCell(dim, dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.norm_input = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_pre_ff = nn.LayerNorm(dim)

    def forward(self, inputs: Tensor, noise: Tensor | None = None, return_attention: bool = False
                ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Group a set of inputs into slots.

        Args:
            inputs: the set, [B, N, W].
            noise: optional standard-normal offsets [B, K, W] added to the slot anchors (reparameterised, so
                gradients reach mu and sigma). Default: a fresh N(0, 1) draw in training and zeros in eval mode, i.e.
                eval starts every slot at its mean and is deterministic.
            return_attention: also return the last iteration's attention and the normalised inputs.

        Returns:
            slots [B, K, W]; with return_attention also the attention [B, K, N] (a weighted mean over the inputs:
            each slot's row sums to 1) and the normalised inputs [B, N, W].
        """
        if inputs.dim() != 3 or inputs.shape[-1] != self.dim:
            raise ValueError(f"SlotAttention: inputs must be [B, N, {self.dim}], got {tuple(inputs.shape)}")
        batch = inputs.shape[0]
        offset = self.anchor.expand(batch, -1, -1)  # [B, K, W]
        if noise is not None:
            if tuple(noise.shape) != tuple(offset.shape):
                raise ValueError(
                    f"SlotAttention: noise must be [B, K, W] = {tuple(offset.shape)}, got {tuple(noise.shape)}"
                )
            offset = offset + noise
        elif self.training:
            offset = offset + torch.randn_like(offset)
        slots = self.slots_mu + self.slots_sigma.abs() * offset  # [B, K, W]

        inputs = self.norm_input(inputs)
        keys = self.to_k(inputs)  # [B, N, W]
        values = self.to_v(inputs)  # [B, N, W]
        for _ in range(self.iters):
            previous = slots
            queries = self.to_q(self.norm_slots(slots))  # [B, K, W]
            logits = torch.einsum("bkw,bnw->bkn", queries, keys) * self.scale  # [B, K, N]
            # fp32 softmax: under fp16 autocast an eps of 1e-8 would underflow to 0.
            attn = logits.float().softmax(dim=1) + self.eps  # slots compete for each input
            attn = (attn / attn.sum(dim=-1, keepdim=True)).to(values.dtype)  # weighted mean over the inputs
            updates = torch.einsum("bkn,bnw->bkw", attn, values)  # [B, K, W]
            slots = self.gru(updates.reshape(-1, self.dim), previous.reshape(-1, self.dim)).reshape_as(previous)
            slots = slots + self.fc2(F.relu(self.fc1(self.norm_pre_ff(slots))))
        return (slots, attn, inputs) if return_attention else slots


class SoftPositionEmbed(nn.Module):
    """Adds a learned embedding of the normalised time position, features ``[g, 1 - g]`` with ``g = t / (L - 1)``.

    Args:
        hidden_size: number of channels D of the sequence it is added to.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.embedding = nn.Linear(2, hidden_size)

    def forward(self, sequence: Tensor) -> Tensor:
        """Add the position embedding to a channels-first sequence.

        Args:
            sequence: [B, D, L].

        Returns:
            [B, D, L].
        """
        grid = torch.linspace(0.0, 1.0, sequence.shape[-1], device=sequence.device, dtype=sequence.dtype)  # [L]
        return sequence + self.embedding(torch.stack([grid, 1.0 - grid], dim=-1)).T  # [D, L] broadcast over B


def row_frame_weights(rows: TokenRows, num_rows: int, frames: int, like: Tensor) -> Tensor:
    """Linear interpolation from token rows to input frames, as a matrix.

    Frame x lies between the two rows whose centres (``rows.centres``) bracket it and takes their values in
    proportion to its distance from each; frames before the first centre or after the last take the end row's value.

    Args:
        rows: where the token rows sit on the frame axis.
        num_rows: T'', the number of token rows.
        frames: T0, the number of input frames.
        like: a tensor whose device and floating dtype the matrix takes.

    Returns:
        [T0, T''], each row summing to 1.
    """
    position = ((torch.arange(frames, device=like.device, dtype=torch.float32) - rows.offset) / rows.stride)
    position = position.clamp(0, num_rows - 1)  # [T0], in row units
    lower = position.floor().long().clamp_max(max(num_rows - 2, 0))
    upper_share = (position - lower).unsqueeze(1)  # [T0, 1]
    columns = torch.arange(num_rows, device=like.device)
    weights = (columns == lower.unsqueeze(1)) * (1 - upper_share) + (columns == lower.unsqueeze(1) + 1) * upper_share
    return weights.to(like.dtype)


def temporal_profile(tokens: Tensor, frames: int, rows: TokenRows) -> Tensor:
    """Frequency-averaged token features, linearly interpolated from the token rows' true centres to ``frames``.

    Args:
        tokens: encoder output on its true grid, time-major, [B, T'', F'', D].
        frames: output length T0.
        rows: where the token rows sit on the frame axis (the encoder's ``token_rows``).

    Returns:
        Channels-first profile, [B, D, T0] (the layout the resampling and the slot attention read without copies).
    """
    if tokens.dim() != 4:
        raise ValueError(
            f"tokens must be [B, T'', F'', D] (the encoder grid, time-major), got shape {tuple(tokens.shape)}; "
            "reshape the flat [B, N, D] tokens with the encoder's (T'', F'') grid"
        )
    weights = row_frame_weights(rows, tokens.shape[1], frames, tokens)  # [T0, T'']
    return torch.einsum("btd,xt->bdx", tokens.mean(dim=2), weights)


def normalise_per_sample(curve: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max normalise each row to [0, 1]; a constant row gives zeros (never NaN).

    Args:
        curve: [B, T0].

    Returns:
        [B, T0].
    """
    low = curve.amin(dim=1, keepdim=True)
    span = curve.amax(dim=1, keepdim=True) - low
    # Clamping the denominator (instead of adding eps) keeps the maximum exactly 1 for any non-constant row.
    return (curve - low) / span.clamp_min(eps)


class TemporalSaliency(Saliency):
    """Temporal saliency of one playback: position-embedded temporal profile -> 2-slot attention -> curve in [0, 1].

    The original's entry ``saliency_slots.{i}`` was an ``nn.Sequential`` whose parameter-free modules 1 and 2 (a
    transpose and a nearest upsample) are plain tensor operations here; its keys ``0.*`` and ``3.*`` load into
    ``position_embed.*`` and ``slot_attention.*`` (:func:`playitback.models.weights.remap_state_dict`).

    Args:
        token_dim: encoder token width D (the number of set elements the slots attend over).
        frames0: T0, the frames of playback 0 (the saliency's length).
        resolution: W, the temporal length each channel is resampled to, which is the slot width.
        num_slots: number of slots; slot 0 is positive and slot 1 negative, so at least 2.
        iters: slot-attention iterations.
        eps: slot-attention eps.
        readout: how the two slots become a curve over time. "slots": slot 0 minus slot 1 (the original: each slot
            is itself a temporal vector, but one that the value projection, the GRU and the MLP mix across all time
            positions, so locality must be learned from scratch). "attention": the mean normalised temporal profile
            of the channels the positive slot attends to, minus that of the negative slot; the slots decide which
            channels matter, and time is never mixed, so a curve peaks where its channels fire.
    """

    def __init__(
        self,
        token_dim: int = 768,
        frames0: int = 400,
        resolution: int = 400,
        num_slots: int = 2,
        iters: int = 3,
        eps: float = 1e-8,
        readout: str = "attention",
    ):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"TemporalSaliency: readout must be one of {READOUTS}, got {readout!r}")
        self.readout = readout
        if num_slots < 2:
            raise ValueError(
                f"TemporalSaliency: num_slots must be >= 2 (a positive and a negative slot), got {num_slots}"
            )
        if readout == "attention" and iters < 2:
            # The readout takes the last iteration's attention, which precedes that iteration's update: with one
            # iteration the value projection, GRU and MLP never act on the output and get no gradient.
            raise ValueError(f"TemporalSaliency: the attention readout needs iters >= 2, got {iters}")
        if frames0 < 1 or resolution < 1:
            raise ValueError(f"TemporalSaliency: frames0 and resolution must be >= 1, got {frames0}, {resolution}")
        self.token_dim = token_dim
        self.frames0 = frames0
        self.resolution = resolution
        self.position_embed = SoftPositionEmbed(token_dim)
        # hidden = max(resolution, 128) as in the original.
        self.slot_attention = SlotAttention(num_slots, resolution, iters, eps, max(resolution, 128))

    # The pooling contrast (playitback.losses.saliency_loss): the tokens pooled by the saliency and by its
    # complement go through the encoder's head.
    objective = "contrast"
    objective_fields = ("pos_logits", "neg_logits")
    reads_encoder_head = True

    @classmethod
    def from_config(cls, cfg: CfgNode, token_dim: int) -> TemporalSaliency:
        sal = cfg.SALIENCY
        return cls(token_dim=token_dim, frames0=cfg.AUDIO_DATA.FRAMES0, resolution=derived.saliency_resolution(cfg),
                   num_slots=sal.NUM_SLOTS, iters=sal.ITERS, readout=sal.READOUT)

    def score(self, view: PlaybackView) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The saliency of the tokens, and the head's logits [B, K] of the tokens pooled with the selection weights
        (:func:`selection_weights` at ``view.budget``) and with their complement."""
        saliency, _ = self(view.tokens, view.token_rows)
        positive, negative = saliency_contrast(view.tokens, selection_weights(saliency, view.budget),
                                               view.token_rows)
        return saliency, (view.head(positive.unsqueeze(1)), view.head(negative.unsqueeze(1)))

    def forward(self, tokens: Tensor, rows: TokenRows) -> tuple[Tensor, Tensor]:
        """Compute the saliency curve of a batch of token grids.

        Args:
            tokens: encoder output on its true grid, time-major, [B, T'', F'', D].
            rows: where the token rows sit on the frame axis (the encoder's ``token_rows``).

        Returns:
            ``(saliency, slots)``: saliency [B, T0] in [0, 1], min-max normalised per sample (all zeros if constant);
            slots [B, K, W].
        """
        if tokens.dim() != 4 or tokens.shape[-1] != self.token_dim:
            raise ValueError(
                f"TemporalSaliency: tokens must be [B, T'', F'', {self.token_dim}] (the encoder grid, time-major), "
                f"got shape {tuple(tokens.shape)}"
            )
        profile = temporal_profile(tokens, self.frames0, rows)  # [B, D, T0]
        channels = self.position_embed(profile)
        if self.resolution != self.frames0:
            channels = F.interpolate(channels, size=self.resolution, mode="nearest")  # [B, D, W]
            profile = F.interpolate(profile, size=self.resolution, mode="nearest")
        slots, attn = self.slot_attention(channels, return_attention=True)[:2]  # [B, K, W], [B, K, D]
        if self.readout == "slots":
            raw = slots[:, 0] - slots[:, 1]  # [B, W]
        else:
            # The channels' own profiles, standardised over time and without the position embedding: the curve
            # follows what the selected channels do, not where the clip is.
            standardised = F.layer_norm(profile, (self.resolution,))
            raw = torch.einsum("bn,bnw->bw", attn[:, 0] - attn[:, 1], standardised)  # [B, W]
        raw = raw.unsqueeze(1)
        raw = F.interpolate(raw, size=self.frames0, mode="linear", align_corners=False).squeeze(1)  # [B, T0]
        return normalise_per_sample(raw), slots


def budget_frames(budget: float, frames: int) -> int:
    """Frames a fixed budget replays: ``round(budget * frames)``, at least 1 and at most ``frames``."""
    return max(1, min(int(frames), int(budget * int(frames) + 0.5)))


def saliency_mask(saliency: Tensor, budget: float = 0.0) -> Tensor:
    """The frames a playback replays, from its saliency curve.

    ``budget`` 0 (the original): the frames above the per-sample mean; a sample whose mask would be empty (a
    constant curve) replays the whole clip, i.e. its mask becomes all True. ``budget`` in (0, 1]: a fixed budget,
    the ``max(1, round(budget * T0))`` most salient frames of every sample (the same replayed length for every clip,
    which is what a fair random-span control needs). The batch size never changes.

    Args:
        saliency: [B, T0] in [0, 1].
        budget: share of the frames to replay, or 0 for the mean threshold.

    Returns:
        bool [B, T0].
    """
    if budget > 0:
        top = saliency.topk(budget_frames(budget, saliency.shape[1]), dim=1).indices
        return torch.zeros_like(saliency, dtype=torch.bool).scatter(1, top, torch.ones_like(top, dtype=torch.bool))
    mask = saliency > saliency.mean(dim=1, keepdim=True)
    return mask | ~mask.any(dim=1, keepdim=True)


def selection_weights(saliency: Tensor, budget: float = 0.0, temperature: float = 0.05) -> Tensor:
    """Soft frame weights that the pooling objective trains, matching the hard selection of :func:`saliency_mask`.

    ``budget`` 0: the saliency itself (the original's intent). ``budget`` > 0: a differentiable top-k, a sigmoid of
    the distance to the threshold halfway between the k-th and the (k+1)-th most salient value (held fixed, so the
    gradient moves the frames, not the threshold): close to 1 on the selected frames and 0 elsewhere, with
    ``temperature`` setting how soft the edge is.

    Args:
        saliency: [B, T0] in [0, 1].
        budget: as for :func:`saliency_mask`.
        temperature: width of the sigmoid edge, in saliency units.

    Returns:
        [B, T0] in [0, 1].
    """
    if budget <= 0:
        return saliency
    frames = saliency.shape[1]
    count = budget_frames(budget, frames)
    if count == frames:
        return torch.ones_like(saliency)
    top = saliency.topk(count + 1, dim=1).values  # [B, k + 1], descending
    threshold = ((top[:, -2] + top[:, -1]) / 2).detach().unsqueeze(1)
    return torch.sigmoid((saliency - threshold) / temperature)


def masked_token_pool(tokens: Tensor, weights: Tensor, rows: TokenRows, eps: float = 1e-6) -> Tensor:
    """Weighted mean of the tokens over time and frequency, with per-frame weights.

    The T0 frame weights are carried onto the T'' token rows by the transpose of the rows-to-frames interpolation
    (:func:`row_frame_weights`): token row t gets the mean weight of the frames it is interpolated to, each counted
    by its interpolation share. Then each token is weighted by its row's weight.

    Args:
        tokens: encoder output on its true grid, time-major, [B, T'', F'', D].
        weights: non-negative frame weights, [B, T0].
        rows: where the token rows sit on the frame axis (the encoder's ``token_rows``).
        eps: lower bound of the weight total, so all-zero weights give a zero vector instead of NaN.

    Returns:
        [B, D].
    """
    if tokens.dim() != 4 or weights.dim() != 2 or weights.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"masked_token_pool: need tokens [B, T'', F'', D] and weights [B, T0], got {tuple(tokens.shape)} and "
            f"{tuple(weights.shape)}"
        )
    shares = row_frame_weights(rows, tokens.shape[1], weights.shape[1], tokens)  # [T0, T'']
    row_weights = weights.to(shares.dtype) @ shares / shares.sum(dim=0).clamp_min(eps)  # [B, T'']
    # Every token of a row shares the row weight, so the frequency mean can be taken first.
    weighted = torch.einsum("bt,btd->bd", row_weights, tokens.mean(dim=2))  # [B, D]
    return weighted / row_weights.sum(dim=1, keepdim=True).clamp_min(eps)


def saliency_contrast(tokens: Tensor, saliency: Tensor, rows: TokenRows) -> tuple[Tensor, Tensor]:
    """Tokens pooled by the saliency (positive) and by its complement (negative).

    Args:
        tokens: [B, T'', F'', D].
        saliency: [B, T0] in [0, 1].
        rows: where the token rows sit on the frame axis.

    Returns:
        ``(positive, negative)``, each [B, D].
    """
    return masked_token_pool(tokens, saliency, rows), masked_token_pool(tokens, 1.0 - saliency, rows)

"""TemPr: the Perceiver-style decoder that fuses the encoder tokens of every playback.

One latent array attends to the tokens of playback 0, then of playback 1, and so on (one cross-attention layer per
playback, each followed by a small latent transformer). The latent array is recorded after every layer, reduced to one
vector per playback, classified by a shared head and fused over the playbacks (the original PlayItBack's decoder,
with its fixes: the true (time, frequency) token grid, a working "mean" fusion, per-task class counts for prediction
fusion and an out-of-place fp32 softmax).

Module and attribute names reproduce the original state-dict layout (``latents``, ``layers.{i}.{0,1,2}``,
``reduce.2``, ``fusion.2``, ``fc`` / ``fc.{t}``) so original PlayItBack checkpoints load unchanged.

Shape legend used in the docstrings:
    B: batch size. S: number of playbacks. T'': time tokens, F'': frequency tokens of one playback's grid.
    D: encoder token width (``input_dim``). C: context width (D plus the Fourier channels).
    N: number of latents. L: latent width (``latent_dim``). H: attention heads. K: total number of classes.
    W: the width being fused (L for fusion over features, K for fusion over predictions).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.export
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange, Reduce
from torch import Tensor, nn

from playitback.config.choices import FUSION_LOCATIONS, FUSIONS


def fourier_position_encoding(
    time_size: int,
    freq_size: int,
    *,
    max_freq: float,
    num_freq_bands: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Fourier features of every position of a (time, frequency) token grid.

    Each axis is sampled as ``linspace(-1, 1, size)``; a coordinate x becomes
    ``[sin(pi x s_1) .. sin(pi x s_M), cos(pi x s_1) .. cos(pi x s_M), x]`` with
    ``s = linspace(1, max_freq / 2, M)`` and M = ``num_freq_bands``. The time axis comes first.

    Args:
        time_size: Number of time tokens T''.
        freq_size: Number of frequency tokens F''.
        max_freq: Highest frequency; the largest scale is ``max_freq / 2``.
        num_freq_bands: Number of scales M per axis.
        device: Device of the result.
        dtype: Dtype of the result (the encoding itself is computed in fp32).

    Returns:
        Tensor [T'', F'', 2 * (2M + 1)].
    """
    axes = [torch.linspace(-1.0, 1.0, size, device=device) for size in (time_size, freq_size)]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # [T'', F'', 2]
    scales = torch.linspace(1.0, max_freq / 2, num_freq_bands, device=device)
    scaled = pos.unsqueeze(-1) * scales * math.pi  # [T'', F'', 2, M]
    enc = torch.cat([scaled.sin(), scaled.cos(), pos.unsqueeze(-1)], dim=-1)  # [T'', F'', 2, 2M + 1]
    return enc.flatten(-2).to(dtype)


def softmax_fp32(sim: Tensor) -> Tensor:
    """Softmax over the last dim computed in fp32 and cast back to the input dtype.

    Out of place on purpose: the original subtracted the max in place on a tensor autograd still needed, which breaks
    backward. ``torch.softmax`` is already stable, and fp32 keeps the weights summing to 1 under bf16/fp16 autocast.

    Args:
        sim: Attention logits [..., Q, Kv].

    Returns:
        Attention weights [..., Q, Kv] in ``sim.dtype``.
    """
    return torch.softmax(sim.float(), dim=-1).to(sim.dtype)


class GEGLU(nn.Module):
    """Gated GELU: splits the last dim in halves (a, b) and returns a * GELU(b)."""

    def forward(self, x: Tensor) -> Tensor:
        """Gate the first half of the features by the second.

        Args:
            x: Tensor [..., 2E].

        Returns:
            Tensor [..., E].
        """
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class FeedForward(nn.Module):
    """Linear(L -> 2 * mult * L), GEGLU, Dropout, Linear(mult * L -> L)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        """Build the feed-forward block.

        Args:
            dim: Input and output width L.
            mult: Hidden width multiplier.
            dropout: Dropout after the gate.
        """
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult * 2), GEGLU(), nn.Dropout(dropout), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block.

        Args:
            x: Tensor [B, N, L].

        Returns:
            Tensor [B, N, L].
        """
        return self.net(x)


class Attention(nn.Module):
    """Multi-head attention of queries over a context (the queries themselves for self-attention)."""

    def __init__(
        self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64, dropout: float = 0.0
    ) -> None:
        """Build the projections.

        Args:
            query_dim: Query width L.
            context_dim: Context width C; None means self-attention (C = L).
            heads: Number of heads H.
            dim_head: Width of one head.
            dropout: Dropout after the output projection.
        """
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(context_dim or query_dim, inner_dim * 2, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Attend from ``x`` to ``context``.

        Args:
            x: Queries [B, N, L].
            context: Keys and values [B, M, C]; None attends ``x`` to itself.

        Returns:
            Tensor [B, N, L].
        """
        context = x if context is None else context
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        attn = softmax_fp32(torch.einsum("bhid,bhjd->bhij", q, k) * self.scale)  # [B, H, N, M]
        out = torch.einsum("bhij,bhjd->bhid", attn, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class PreNorm(nn.Module):
    """LayerNorm on the input (and on the context when ``context_dim`` is given) before ``fn``."""

    def __init__(self, dim: int, fn: nn.Module, context_dim: int | None = None) -> None:
        """Wrap ``fn``.

        Args:
            dim: Width L of the input.
            fn: An :class:`Attention` (with a context when ``context_dim`` is set) or a :class:`FeedForward`.
            context_dim: Width C of the context, or None when ``fn`` takes no context.
        """
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Normalise, then apply ``fn``.

        Args:
            x: Tensor [B, N, L].
            context: Tensor [B, M, C]; required when the block was built with a ``context_dim``.

        Returns:
            Tensor [B, N, L].
        """
        if self.norm_context is None:
            return self.fn(self.norm(x))
        return self.fn(self.norm(x), self.norm_context(context))


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise a ValueError naming ``name`` and the valid ``choices`` when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}")


@dataclass
class DecoderOutput:
    """What TemPr returns.

    Attributes:
        logits: [B, K] the fused logits (with several tasks, the tasks' logits concatenated in the order of
            ``num_classes``).
        playback_logits: [S, B, K] the logits of each playback's latent state; the state after layer p has read
            playbacks 0..p only.
        features: [B, L] the fused features for fusion over features; for fusion over predictions, the mean over
            playbacks of the reduced per-playback features.
    """

    logits: Tensor
    playback_logits: Tensor
    features: Tensor


# A pytree node, so torch.export and torch.compile see the tensors inside.
torch.export.register_dataclass(DecoderOutput, serialized_type_name="playitback.DecoderOutput")


class TemPr(nn.Module):
    """Perceiver-style decoder with one cross-attention layer per playback and fusion over the playbacks."""

    def __init__(
        self,
        *,
        num_playbacks: int,
        input_dim: int,
        num_classes: Sequence[int],
        num_freq_bands: int = 6,
        max_freq: float = 10.0,
        fourier_encode_data: bool = True,
        num_latents: int = 256,
        latent_dim: int = 512,
        cross_heads: int = 1,
        latent_heads: int = 8,
        cross_dim_head: int = 64,
        latent_dim_head: int = 64,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        weight_tie_layers: bool = False,
        self_per_cross_attn: int = 3,
        fusion: str = "adaptive",
        fusion_loc: str = "features",
        fusion_dropout: float = 0.1,
    ) -> None:
        """Build the decoder.

        Args:
            num_playbacks: Number of playbacks S (``MODEL.PLAYBACK + 1``, the original's ``DECODER.DEPTH``).
            input_dim: Encoder token width D (768 for MViTv2-B/S).
            num_classes: Class count of each task, e.g. ``[309]`` or ``[97, 300]`` (EPIC verb, noun).
            num_freq_bands: Fourier scales per grid axis.
            max_freq: Highest Fourier frequency (the largest scale is ``max_freq / 2``).
            fourier_encode_data: Concatenate the Fourier encoding of the token grid to the tokens.
            num_latents: Number of latents N.
            latent_dim: Latent width L.
            cross_heads: Heads of the cross-attention.
            latent_heads: Heads of the latent self-attention.
            cross_dim_head: Head width of the cross-attention.
            latent_dim_head: Head width of the latent self-attention.
            attn_dropout: Dropout after every attention output projection.
            ff_dropout: Dropout inside every feed-forward block.
            weight_tie_layers: As in the original: layer 0 keeps its own modules, and every layer from 1 on reuses one
                cross-attention, one cross feed-forward, one self-attention and one self feed-forward (the latter
                two also shared by all ``self_per_cross_attn`` blocks of those layers).
            self_per_cross_attn: Self-attention + feed-forward blocks after each cross-attention.
            fusion: How the S playbacks are fused: "mean", "adaptive" (a learnt convolution over playbacks) or
                "adaptive_concat" (an MLP over the concatenated playbacks).
            fusion_loc: Fuse the reduced "features" (then classify) or the per-playback "predictions" (logits).
            fusion_dropout: Dropout inside the "adaptive" fusion of features and the "adaptive_concat" fusion (the
                per-class convolution that fuses predictions has none).

        Raises:
            ValueError: On an unknown ``fusion`` or ``fusion_loc``, or a non-positive size.
        """
        super().__init__()
        _check_choice("fusion", fusion, FUSIONS)
        _check_choice("fusion_loc", fusion_loc, FUSION_LOCATIONS)
        if isinstance(num_classes, int) or not num_classes or any(int(k) < 1 for k in num_classes):
            raise ValueError(
                f"num_classes={num_classes!r} must be a non-empty sequence of positive class counts, one per task, "
                "e.g. [309] or [97, 300]"
            )
        sizes = dict(num_playbacks=num_playbacks, input_dim=input_dim, num_latents=num_latents, latent_dim=latent_dim)
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"{name}={value} must be a positive integer")

        self.num_playbacks = num_playbacks
        self.input_dim = input_dim
        self.num_classes = tuple(int(k) for k in num_classes)
        self.num_freq_bands = num_freq_bands
        self.max_freq = max_freq
        self.fourier_encode_data = fourier_encode_data
        self.fusion_loc = fusion_loc
        context_dim = input_dim + (2 * (2 * num_freq_bands + 1) if fourier_encode_data else 0)

        self.latents = nn.Parameter(torch.empty(num_latents, latent_dim))
        nn.init.kaiming_uniform_(self.latents)

        def cross_attn() -> PreNorm:
            attn = Attention(latent_dim, context_dim, heads=cross_heads, dim_head=cross_dim_head, dropout=attn_dropout)
            return PreNorm(latent_dim, attn, context_dim=context_dim)

        def self_attn() -> PreNorm:
            attn = Attention(latent_dim, heads=latent_heads, dim_head=latent_dim_head, dropout=attn_dropout)
            return PreNorm(latent_dim, attn)

        def feed_forward() -> PreNorm:
            return PreNorm(latent_dim, FeedForward(latent_dim, dropout=ff_dropout))

        tied: tuple[PreNorm, PreNorm, PreNorm, PreNorm] | None = None
        self.layers = nn.ModuleList()
        for i in range(num_playbacks):
            if weight_tie_layers and i > 0:
                tied = tied or (cross_attn(), feed_forward(), self_attn(), feed_forward())
                ca, cf, sa, sf = tied
                blocks = [nn.ModuleList([sa, sf]) for _ in range(self_per_cross_attn)]
            else:
                ca, cf = cross_attn(), feed_forward()
                blocks = [nn.ModuleList([self_attn(), feed_forward()]) for _ in range(self_per_cross_attn)]
            self.layers.append(nn.ModuleList([ca, cf, nn.ModuleList(blocks)]))

        self.reduce = nn.Sequential(
            Reduce("s b n l -> s b l", "mean"), Rearrange("s b l -> b s l"), nn.LayerNorm(latent_dim)
        )
        width = latent_dim if fusion_loc == "features" else sum(self.num_classes)
        self.fusion = self._build_fusion(fusion, fusion_loc, width, num_playbacks, fusion_dropout)
        if len(self.num_classes) == 1:
            self.fc: nn.Module = nn.Linear(latent_dim, self.num_classes[0])
        else:
            self.fc = nn.ModuleList(nn.Linear(latent_dim, k) for k in self.num_classes)

    @staticmethod
    def _build_fusion(fusion: str, fusion_loc: str, width: int, num_playbacks: int, dropout: float) -> nn.Module:
        """Build the module that fuses the playbacks, mapping [B, S, W] to [B, W].

        The learnt convolution sits at index 2, as in the original, so ``fusion.2.weight`` loads from its checkpoints.

        Args:
            fusion: One of :data:`FUSIONS`.
            fusion_loc: One of :data:`FUSION_LOCATIONS`.
            width: Width W being fused (L for features, K for predictions).
            num_playbacks: Number of playbacks S.
            dropout: Dropout of the learnt fusions (see ``TemPr``'s ``fusion_dropout``).

        Returns:
            The fusion module.
        """
        if fusion == "mean":
            return Reduce("b s w -> b w", "mean")
        if fusion == "adaptive_concat":
            return nn.Sequential(
                Rearrange("b s w -> b (s w)"),
                nn.Linear(num_playbacks * width, 2 * width),
                GEGLU(),
                nn.Dropout(dropout),
                nn.Linear(width, width),
            )
        if fusion_loc == "features":
            conv = nn.Conv1d(width, width, kernel_size=num_playbacks, bias=False)
            after: list[nn.Module] = [nn.ReLU(), nn.Dropout(dropout)]
        else:
            # One weight per (class, playback): a ReLU here would clip the negative logits, so none is applied.
            conv = nn.Conv1d(width, width, kernel_size=num_playbacks, groups=width, bias=False)
            after = []
        # Index 1 held a no-op in the original; keeping a slot there keeps the checkpoint key `fusion.2.weight`.
        return nn.Sequential(Rearrange("b s w -> b w s"), nn.Identity(), conv, *after, Rearrange("b w 1 -> b w"))

    def _classify(self, x: Tensor) -> Tensor:
        """Logits of every task, concatenated in the order of ``num_classes``.

        Args:
            x: Features [..., L].

        Returns:
            Logits [..., K].
        """
        if isinstance(self.fc, nn.ModuleList):
            return torch.cat([head(x) for head in self.fc], dim=-1)
        return self.fc(x)

    def _context(self, tokens: Tensor, index: int) -> Tensor:
        """Flatten one playback's token grid (time-major) and append its Fourier position encoding.

        Args:
            tokens: Tensor [B, T'', F'', D].
            index: Playback index, for error messages.

        Returns:
            Tensor [B, T'' * F'', C].
        """
        if tokens.ndim != 4 or tokens.shape[-1] != self.input_dim:
            raise ValueError(
                f"tokens[{index}] has shape {tuple(tokens.shape)}; expected [B, T'', F'', {self.input_dim}] "
                "(encoder tokens on their (time, frequency) grid, time-major, width input_dim)"
            )
        if self.fourier_encode_data:
            b, t, f, _ = tokens.shape
            enc = fourier_position_encoding(
                t, f, max_freq=self.max_freq, num_freq_bands=self.num_freq_bands, device=tokens.device,
                dtype=tokens.dtype,
            )
            tokens = torch.cat([tokens, enc.expand(b, -1, -1, -1)], dim=-1)
        return tokens.flatten(1, 2)

    def forward(self, tokens: Sequence[Tensor]) -> DecoderOutput:
        """Decode and fuse the playbacks.

        Args:
            tokens: S tensors [B, T'', F'', D], the encoder output of each playback on its own (time, frequency)
                grid, time-major. Playback i feeds cross-attention layer i.

        Returns:
            A :class:`DecoderOutput`.

        Raises:
            ValueError: When the number of tensors is not ``num_playbacks`` or a tensor has the wrong shape.
        """
        if len(tokens) != self.num_playbacks:
            raise ValueError(
                f"TemPr was built for num_playbacks={self.num_playbacks} but got {len(tokens)} token tensors; "
                "pass one [B, T'', F'', D] tensor per playback"
            )
        contexts = [self._context(t, i) for i, t in enumerate(tokens)]
        batch = contexts[0].shape[0]
        if any(c.shape[0] != batch for c in contexts):
            raise ValueError(
                f"the playbacks' token tensors have batch sizes {[c.shape[0] for c in contexts]}; "
                "pass tensors of the same batch, one per playback"
            )

        x = self.initial_state(batch)
        states = []
        for index, context in enumerate(contexts):
            x = self._read_context(x, context, index)
            states.append(x)
        return self.fuse(states)

    def initial_state(self, batch: int) -> Tensor:
        """The learned latent array before any playback, [B, N, L]."""
        return self.latents.expand(batch, -1, -1)

    def _read_context(self, state: Tensor, context: Tensor, index: int) -> Tensor:
        cross_attn, cross_ff, self_blocks = self.layers[index]
        x = cross_attn(state, context) + state
        x = cross_ff(x) + x
        for self_attn, self_ff in self_blocks:
            x = self_attn(x) + x
            x = self_ff(x) + x
        return x

    def read(self, state: Tensor, tokens: Tensor, index: int) -> Tensor:
        """One step of the decoder: the latent state [B, N, L] after layer ``index`` has read playback ``index``'s
        tokens [B, T'', F'', D]. ``forward`` is these steps from :meth:`initial_state`, then :meth:`fuse`; stepping
        lets a caller stop after any playback (anytime inference)."""
        return self._read_context(state, self._context(tokens, index), index)

    def state_logits(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """A playback's logits [B, K] and reduced features [B, L] from its latent state [B, N, L] (what
        ``forward`` returns as ``playback_logits[p]`` for the state after layer p)."""
        features = self.reduce(state.unsqueeze(0))[:, 0]
        return self._classify(features), features

    def fuse(self, states: Sequence[Tensor]) -> DecoderOutput:
        """The decoder's output from the latent states after every layer (S tensors [B, N, L])."""
        feats = self.reduce(torch.stack(list(states)))  # [B, S, L]
        playback_logits = self._classify(feats)  # [B, S, K]
        if self.fusion_loc == "features":
            fused = self.fusion(feats)
            logits = self._classify(fused)
        else:
            fused = feats.mean(dim=1)
            logits = self.fusion(playback_logits)
        return DecoderOutput(logits=logits, playback_logits=playback_logits.transpose(0, 1), features=fused)

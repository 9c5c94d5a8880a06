"""MViTv2 encoder for one-channel log-mel spectrograms.

This is the image MViTv2 (Li et al., CVPR 2022, as published in facebookresearch/mvit and PySlowFast) adapted to
spectrograms the way the original PlayItBack does it: the input is ``[B, 1, T, F]`` with time as the image height and
frequency as the width, and the tokens are laid out time-major with the frequency index varying fastest. Module and
parameter names follow the official layout (``patch_embed.proj``, ``blocks.N.attn.pool_q`` ...), so published MViTv2
checkpoints and original PlayItBack encoders load key for key (see :mod:`playitback.models.weights`).

Relative position embeddings are not supported: every original PlayItBack config disables them, and they need a
square, fixed-size input, which a spectrogram of arbitrary length is not.

Shape legend used in the docstrings:
    B batch, C input channels (1), T spectrogram frames, F mel bins, N tokens (``T'' * F''``, plus one with a cls
    token), D token width, h attention heads, d head width, (T', F') the token grid before a block,
    (T'', F'') the grid after it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import Tensor, nn

from playitback.config import derived
from playitback.config.choices import HEAD_POOLS, POOL_MODES
from playitback.models.encoder import Encoder, Grid, InputNorm, TokenRows, init_weights

_LAYER_NORM_EPS = 1e-6


def round_width(width: float, multiplier: float, min_width: int = 1, divisor: int = 1) -> int:
    """Scale a width and round it to a multiple of ``divisor``, exactly as MViTv2 does.

    Args:
        width: The width (or head count) to scale.
        multiplier: The scale factor.
        min_width: The smallest width returned.
        divisor: The returned width is a multiple of it.

    Returns:
        ``width * multiplier`` rounded to the nearest multiple of ``divisor``, bumped up by one divisor when
        rounding lost more than 10%.
    """
    scaled = width * multiplier
    rounded = max(min_width, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def adaptive_kv_stride(
    depth: int, pool_q_stride: Sequence[Sequence[int]], initial_stride: Sequence[int]
) -> list[list[int]]:
    """Derive the per-block key/value pooling stride from an initial stride, as PySlowFast does.

    The KV stride starts at ``initial_stride`` and, at every block listed in ``pool_q_stride``, is divided by that
    block's query stride (floored at 1), so keys and values keep roughly the same grid size while the queries shrink.
    The inputs are left untouched.

    Args:
        depth: Number of blocks.
        pool_q_stride: Entries ``[block_index, stride_t, stride_f]``.
        initial_stride: KV stride ``(stride_t, stride_f)`` before the first block.

    Returns:
        One entry ``[block_index, stride_t, stride_f]`` per block, for blocks ``0 .. depth - 1``.
    """
    q_strides = {int(entry[0]): [int(s) for s in entry[1:]] for entry in pool_q_stride}
    stride = [int(s) for s in initial_stride]
    per_block = []
    for index in range(depth):
        if index in q_strides:
            stride = [max(s // q, 1) for s, q in zip(stride, q_strides[index])]
        per_block.append([index, *stride])
    return per_block


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability ``drop_prob`` in training."""

    def __init__(self, drop_prob: float) -> None:
        """Create the layer.

        Args:
            drop_prob: Probability of dropping the branch of each sample.
        """
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        """Drop and rescale per sample in training; identity in eval mode.

        Args:
            x: Residual branch ``[B, ...]``.

        Returns:
            Tensor of the same shape as ``x``.
        """
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class PatchEmbed(nn.Module):
    """Convolutional patch embedding that turns a spectrogram into a time-major token sequence, optionally after a
    stem of 3x3 convolutions (early convolutions: Xiao et al., "Early Convolutions Help Transformers See Better",
    NeurIPS 2021)."""

    def __init__(
        self, in_chans: int, embed_dim: int, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
        stem_channels: Sequence[int] = (),
    ) -> None:
        """Create the patch convolution.

        Args:
            in_chans: Input channels (1 for a log-mel spectrogram).
            embed_dim: Token width D.
            kernel: Convolution kernel (time, frequency).
            stride: Convolution stride (time, frequency).
            padding: Convolution padding (time, frequency).
            stem_channels: Widths of the stem's 3x3 convolutions (stride 1, padding 1, each followed by a GELU), in
                order, before the patch convolution; empty for none (module ``stem`` exists only then). Stride 1
                keeps the token grid and the token rows' times those of the patch convolution alone.
        """
        super().__init__()
        self.in_chans = in_chans
        layers: list[nn.Module] = []
        channels = in_chans
        for width in stem_channels:
            layers += [nn.Conv2d(channels, int(width), 3, 1, 1), nn.GELU()]
            channels = int(width)
        self.stem = nn.Sequential(*layers) if layers else None
        self.proj = nn.Conv2d(channels, embed_dim, tuple(kernel), tuple(stride), tuple(padding))

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        """Embed the patches.

        Args:
            x: Spectrogram ``[B, C, T, F]``.

        Returns:
            Tokens ``[B, T' * F', D]`` (frequency fastest) and the grid ``(T', F')``.
        """
        if self.stem is not None:
            x = self.stem(x)
        x = self.proj(x)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid


def _pool_tokens(
    x: Tensor, pool: nn.Module | None, norm: nn.Module | None, grid: Grid, has_cls: bool
) -> tuple[Tensor, Grid]:
    """Pool per-head tokens over their 2-D grid; a leading cls token bypasses the pooling.

    Args:
        x: Tokens ``[B, h, N, d]``.
        pool: Pooling over ``[B * h, d, T', F']``, or None to skip pooling.
        norm: Optional normalisation applied to the pooled tokens (cls token included).
        grid: ``(T', F')`` of the non-cls tokens.
        has_cls: Whether ``x[:, :, 0]`` is a cls token.

    Returns:
        Pooled tokens ``[B, h, N', d]`` and their grid ``(T'', F'')``.
    """
    if pool is None:
        return x, grid
    if has_cls:
        cls_token, x = x[:, :, :1], x[:, :, 1:]
    batch, heads, _, channels = x.shape
    x = pool(x.reshape(batch * heads, grid[0], grid[1], channels).permute(0, 3, 1, 2))
    grid = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2).reshape(batch, heads, grid[0] * grid[1], channels)
    if has_cls:
        x = torch.cat((cls_token, x), dim=2)
    if norm is not None:
        x = norm(x)
    return x, grid


def _prod(values: Sequence[int]) -> int:
    result = 1
    for value in values:
        result *= value
    return result


def _is_identity_pool(kernel: Sequence[int], stride: Sequence[int]) -> bool:
    return _prod(kernel) == 1 and _prod(stride) == 1


def _make_pool(
    mode: str, channels: int, kernel: Sequence[int], stride: Sequence[int]
) -> tuple[nn.Module, nn.Module | None]:
    """Build one Q/K/V pooling operator and its LayerNorm (conv mode only)."""
    padding = tuple(k // 2 for k in kernel)
    if mode == "conv":
        conv = nn.Conv2d(channels, channels, tuple(kernel), tuple(stride), padding, groups=channels, bias=False)
        return conv, nn.LayerNorm(channels, eps=_LAYER_NORM_EPS)
    pool_class = nn.MaxPool2d if mode == "max" else nn.AvgPool2d
    return pool_class(tuple(kernel), tuple(stride), padding), None


class MultiScaleAttention(nn.Module):
    """Multi-head pooling attention of MViTv2 (pooled Q/K/V, residual pooling), without relative positions."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        qkv_bias: bool,
        kernel_q: Sequence[int],
        kernel_kv: Sequence[int],
        stride_q: Sequence[int],
        stride_kv: Sequence[int],
        mode: str,
        has_cls_embed: bool,
        pool_first: bool,
        residual_pooling: bool,
    ) -> None:
        """Create the projections and the Q/K/V pooling.

        Args:
            dim: Input token width.
            dim_out: Output token width (a multiple of ``num_heads``).
            num_heads: Number of heads.
            qkv_bias: Whether the Q/K/V projections have a bias.
            kernel_q: Query pooling kernel; empty for no pooling.
            kernel_kv: Key/value pooling kernel; empty for no pooling.
            stride_q: Query pooling stride.
            stride_kv: Key/value pooling stride.
            mode: "conv" (depthwise conv + LayerNorm), "avg" or "max".
            has_cls_embed: Whether the first token is a cls token that is never pooled.
            pool_first: Pool the input tokens before the Q/K/V projections (separate ``q``, ``k``, ``v`` Linears).
            residual_pooling: Add the pooled queries to the attention output.
        """
        super().__init__()
        self.num_heads = num_heads
        self.dim_out = dim_out
        self.scale = (dim_out // num_heads) ** -0.5
        self.has_cls_embed = has_cls_embed
        self.pool_first = pool_first
        self.residual_pooling = residual_pooling
        if pool_first:
            self.q = nn.Linear(dim, dim_out, bias=qkv_bias)
            self.k = nn.Linear(dim, dim_out, bias=qkv_bias)
            self.v = nn.Linear(dim, dim_out, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

        # A 1x1 kernel with stride 1 is an identity pooling: MViTv2 drops it (and its parameters) entirely.
        if _is_identity_pool(kernel_q, stride_q):
            kernel_q = ()
        if _is_identity_pool(kernel_kv, stride_kv):
            kernel_kv = ()
        pool_dim = (dim if pool_first else dim_out) // num_heads
        self.pool_q, self.norm_q = _make_pool(mode, pool_dim, kernel_q, stride_q) if kernel_q else (None, None)
        self.pool_k, self.norm_k = _make_pool(mode, pool_dim, kernel_kv, stride_kv) if kernel_kv else (None, None)
        self.pool_v, self.norm_v = _make_pool(mode, pool_dim, kernel_kv, stride_kv) if kernel_kv else (None, None)

    def _project_heads(self, linear: nn.Linear, x: Tensor) -> Tensor:
        """Apply a pool-first projection: ``[B, h, N, dim / h]`` -> ``[B, h, N, d]``."""
        batch, _, tokens, _ = x.shape
        x = linear(x.transpose(1, 2).reshape(batch, tokens, -1))
        return x.reshape(batch, tokens, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
        """Attend with pooled queries, keys and values.

        Args:
            x: Tokens ``[B, N, dim]`` on the grid ``(T', F')`` (plus a leading cls token if enabled).
            grid: ``(T', F')``.

        Returns:
            Tokens ``[B, N', dim_out]`` on the query grid ``(T'', F'')``, and that grid.
        """
        batch, tokens, _ = x.shape
        if self.pool_first:
            q = k = v = x.reshape(batch, tokens, self.num_heads, -1).transpose(1, 2)
        else:
            q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, q_grid = _pool_tokens(q, self.pool_q, self.norm_q, grid, self.has_cls_embed)
        k, _ = _pool_tokens(k, self.pool_k, self.norm_k, grid, self.has_cls_embed)
        v, _ = _pool_tokens(v, self.pool_v, self.norm_v, grid, self.has_cls_embed)
        if self.pool_first:
            q, k, v = self._project_heads(self.q, q), self._project_heads(self.k, k), self._project_heads(self.v, v)

        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # [B, h, N', d]
        if self.residual_pooling:
            if self.has_cls_embed:
                out = torch.cat((out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]), dim=2)
            else:
                out = out + q
        out = out.transpose(1, 2).reshape(batch, out.shape[2], self.dim_out)
        return self.proj(out), q_grid


class Mlp(nn.Module):
    """Two-layer perceptron with GELU (``mlp.fc1``, ``mlp.fc2``)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        """Create the two layers.

        Args:
            in_features: Input width.
            hidden_features: Hidden width.
            out_features: Output width.
        """
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Apply fc1, GELU, fc2.

        Args:
            x: ``[..., in_features]``.

        Returns:
            ``[..., out_features]``.
        """
        return self.fc2(self.act(self.fc1(x)))


class MultiScaleBlock(nn.Module):
    """Pre-norm MViTv2 block: pooling attention with a (projected, pooled) skip path, then an MLP."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        kernel_q: Sequence[int],
        kernel_kv: Sequence[int],
        stride_q: Sequence[int],
        stride_kv: Sequence[int],
        mode: str,
        has_cls_embed: bool,
        pool_first: bool,
        residual_pooling: bool,
        dim_mul_in_att: bool,
    ) -> None:
        """Create the block.

        Args:
            dim: Input token width.
            dim_out: Output token width.
            num_heads: Attention heads.
            mlp_ratio: MLP hidden width as a multiple of the attention width.
            qkv_bias: Bias in the Q/K/V projections.
            drop_path: Stochastic-depth rate of both residual branches.
            kernel_q: Query pooling kernel (empty for none).
            kernel_kv: Key/value pooling kernel (empty for none).
            stride_q: Query stride; the skip path is max-pooled with it.
            stride_kv: Key/value stride.
            mode: Pooling mode, "conv", "avg" or "max".
            has_cls_embed: Whether the first token is a cls token.
            pool_first: See :class:`MultiScaleAttention`.
            residual_pooling: See :class:`MultiScaleAttention`.
            dim_mul_in_att: Change the width in the attention (MViTv2) rather than in the MLP (MViTv1).
        """
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.dim_mul_in_att = dim_mul_in_att
        self.has_cls_embed = has_cls_embed
        att_dim = dim_out if dim_mul_in_att else dim
        self.norm1 = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.attn = MultiScaleAttention(
            dim, att_dim, num_heads, qkv_bias, kernel_q, kernel_kv, stride_q, stride_kv, mode, has_cls_embed,
            pool_first, residual_pooling,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(att_dim, eps=_LAYER_NORM_EPS)
        self.mlp = Mlp(att_dim, int(att_dim * mlp_ratio), dim_out)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)
        if _prod(stride_q) > 1:
            kernel_skip = tuple(s + 1 if s > 1 else s for s in stride_q)
            self.pool_skip = nn.MaxPool2d(kernel_skip, tuple(stride_q), tuple(k // 2 for k in kernel_skip))
        else:
            self.pool_skip = None

    def forward(self, x: Tensor, grid: Grid) -> tuple[Tensor, Grid]:
        """Run the block.

        Args:
            x: Tokens ``[B, N, dim]`` on the grid ``(T', F')``.
            grid: ``(T', F')``.

        Returns:
            Tokens ``[B, N', dim_out]`` on the grid ``(T'', F'')``, and that grid.
        """
        x_norm = self.norm1(x)
        x_attn, grid_out = self.attn(x_norm, grid)
        # MViTv2 projects the *normed* input for the skip path when the attention changes the width.
        if self.dim_mul_in_att and self.dim != self.dim_out:
            x = self.proj(x_norm)
        skip, _ = _pool_tokens(x.unsqueeze(1), self.pool_skip, None, grid, self.has_cls_embed)
        x = skip.squeeze(1) + self.drop_path(x_attn)
        x_norm = self.norm2(x)
        x_mlp = self.mlp(x_norm)
        if not self.dim_mul_in_att and self.dim != self.dim_out:
            x = self.proj(x_norm)
        return x + self.drop_path(x_mlp), grid_out


class ClassifierHead(nn.Module):
    """Dropout then a Linear ``projection`` (the official ``head.projection`` layout); returns logits."""

    def __init__(self, dim: int, num_classes: int, dropout_rate: float) -> None:
        """Create the head.

        Args:
            dim: Input width D.
            num_classes: Number of classes K.
            dropout_rate: Dropout before the projection.
        """
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate)
        self.projection = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Project pooled features to logits.

        Args:
            x: Pooled features ``[B, D]``.

        Returns:
            Logits ``[B, K]``.
        """
        return self.projection(self.dropout(x))


class MViT(Encoder):
    """MViTv2 encoder and classification head(s) for spectrograms ``[B, 1, T, F]``.

    The token grid is read from the tensor shapes at every stage, so any T works (unless ``use_abs_pos``), and the
    model traces under ``torch.compile(fullgraph=True)`` and ``torch.export``.
    """

    def __init__(
        self,
        *,
        num_classes: Sequence[int],
        embed_dim: int = 96,
        num_heads: int = 1,
        depth: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        dropout_rate: float = 0.5,
        in_chans: int = 1,
        input_size: tuple[int, int] | None = None,
        patch_kernel: Sequence[int] = (7, 7),
        patch_stride: Sequence[int] = (4, 4),
        patch_padding: Sequence[int] = (3, 3),
        dim_mul: Sequence[Sequence[float]] = (),
        head_mul: Sequence[Sequence[float]] = (),
        pool_q_stride: Sequence[Sequence[int]] = (),
        pool_kv_stride: Sequence[Sequence[int]] | None = (),
        pool_kv_stride_adaptive: Sequence[int] | None = None,
        pool_kvq_kernel: Sequence[int] | None = (3, 3),
        mode: str = "conv",
        pool_first: bool = False,
        residual_pooling: bool = True,
        dim_mul_in_att: bool = True,
        use_abs_pos: bool = False,
        cls_embed_on: bool = False,
        input_mean: float = 0.0,
        input_std: float = 1.0,
        head_pool: str = "mean",
        stem_channels: Sequence[int] = (),
        clip_norm: str = "none",
    ) -> None:
        """Build the encoder.

        Args:
            num_classes: Classes per task, e.g. ``[309]`` or ``[97, 300]`` (EPIC verb/noun). One task gives the
                module ``head`` (keys ``head.projection.*``), several give ``head.{i}`` (``head.0.projection.*``).
            embed_dim: Width of the patch embedding.
            num_heads: Heads of the first block.
            depth: Number of blocks.
            mlp_ratio: MLP hidden width over attention width.
            qkv_bias: Bias in the Q/K/V projections.
            drop_path_rate: Stochastic depth of the last block; it rises linearly from 0 at the first block.
            dropout_rate: Dropout before each head's projection.
            in_chans: Input channels.
            input_size: Spectrogram size ``(T, F)``; needed only for ``use_abs_pos``.
            patch_kernel: Patch-embedding kernel (time, frequency).
            patch_stride: Patch-embedding stride.
            patch_padding: Patch-embedding padding.
            dim_mul: ``[block_index, multiplier]`` entries for the token width.
            head_mul: ``[block_index, multiplier]`` entries for the head count.
            pool_q_stride: ``[block_index, stride_t, stride_f]`` entries; a listed block pools its queries (and
                max-pools its skip path when the stride exceeds 1).
            pool_kv_stride: ``[block_index, stride_t, stride_f]`` entries for key/value pooling (None: none).
            pool_kv_stride_adaptive: Initial KV stride from which every block's KV stride is derived
                (:func:`adaptive_kv_stride`); excludes ``pool_kv_stride``.
            pool_kvq_kernel: Pooling kernel of Q/K/V; None uses ``stride + 1`` where the stride exceeds 1.
            mode: Pooling mode: "conv" (depthwise conv + LayerNorm over the head width), "avg" or "max".
            pool_first: Pool before the Q/K/V projections.
            residual_pooling: Add the pooled queries to the attention output.
            dim_mul_in_att: Change the width inside the attention (MViTv2) instead of the MLP (MViTv1).
            use_abs_pos: Add a learned absolute position embedding (fixes the input size to ``input_size``).
            cls_embed_on: Prepend a learned cls token; it takes part in attention and is dropped from the output
                tokens.
            input_mean, input_std: The input is standardised as ``(x - input_mean) / input_std`` (the training set's
                log-mel statistics, as AST and PaSST do); 0 and 1 leave it unchanged. Not in the state dict: they
                come with the config, so published checkpoints load as they are.
            head_pool: How the output tokens become the head's one vector (:meth:`pool`): "mean" (MViTv2), "max"
                (per channel, over tokens: a short event keeps its whole strength however long the clip) or
                "attention" (a softmax over tokens of a learned linear score, module ``head_pool``).
            stem_channels: Widths of a stem of 3x3 convolutions before the patch embedding (:class:`PatchEmbed`);
                empty for none.
            clip_norm: After the affine standardisation, each input is also standardised by its own statistics over
                time and frequency: "none", "mean" (subtract its mean: a log-mel's recording level is an additive
                offset) or "mean_std" (subtract the mean and divide by the standard deviation, floored at 1e-5).

        Raises:
            ValueError: On an inconsistent argument; the message names it.
        """
        super().__init__()
        # Configs spell "no explicit KV stride" as None (the original default).
        pool_kv_stride = pool_kv_stride or ()
        num_classes = [int(n) for n in num_classes]
        if not num_classes or min(num_classes) < 1:
            raise ValueError(f"num_classes must list at least one positive class count per task, got {num_classes}")
        if mode not in POOL_MODES:
            raise ValueError(f"mode must be one of {POOL_MODES}, got {mode!r}")
        if head_pool not in HEAD_POOLS:
            raise ValueError(f"head_pool must be one of {HEAD_POOLS}, got {head_pool!r}")
        if use_abs_pos and input_size is None:
            raise ValueError("use_abs_pos=True needs input_size=(T, F), the spectrogram size the embedding is made for")
        if pool_kv_stride and pool_kv_stride_adaptive is not None:
            raise ValueError("give either pool_kv_stride or pool_kv_stride_adaptive, not both")
        for name, entries in (("dim_mul", dim_mul), ("head_mul", head_mul), ("pool_q_stride", pool_q_stride),
                              ("pool_kv_stride", pool_kv_stride)):
            bad = [list(e) for e in entries if not 0 <= int(e[0]) < depth]
            if bad:
                raise ValueError(f"{name} entries {bad} name blocks outside 0..{depth - 1} (depth={depth})")

        if pool_kv_stride_adaptive is not None:
            pool_kv_stride = adaptive_kv_stride(depth, pool_q_stride, pool_kv_stride_adaptive)
        dim_muls = [1.0] * (depth + 1)
        head_muls = [1.0] * (depth + 1)
        for index, multiplier in dim_mul:
            dim_muls[int(index)] = float(multiplier)
        for index, multiplier in head_mul:
            head_muls[int(index)] = float(multiplier)
        stride_q, kernel_q = _pool_table(depth, pool_q_stride, pool_kvq_kernel)
        stride_kv, kernel_kv = _pool_table(depth, pool_kv_stride, pool_kvq_kernel)

        self.input_norm = InputNorm(input_mean, input_std, clip_norm)
        self.cls_embed_on = cls_embed_on
        self.use_abs_pos = use_abs_pos
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_kernel, patch_stride, patch_padding,
                                      stem_channels)
        if cls_embed_on:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if use_abs_pos:
            self.patch_grid = tuple(
                (size + 2 * pad - kernel) // stride + 1
                for size, pad, kernel, stride in zip(input_size, patch_padding, patch_kernel, patch_stride)
            )
            num_positions = self.patch_grid[0] * self.patch_grid[1] + int(cls_embed_on)
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))

        drop_path_rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList()
        for index in range(depth):
            num_heads = round_width(num_heads, head_muls[index])
            # MViTv2 rounds the width to a multiple of the head count multiplied once more (its own quirk, kept
            # so that widths match published checkpoints).
            if dim_mul_in_att:
                dim_out = round_width(embed_dim, dim_muls[index], divisor=round_width(num_heads, head_muls[index]))
            else:
                dim_out = round_width(
                    embed_dim, dim_muls[index + 1], divisor=round_width(num_heads, head_muls[index + 1])
                )
            att_dim = dim_out if dim_mul_in_att else embed_dim
            if att_dim % num_heads or (pool_first and embed_dim % num_heads):
                raise ValueError(
                    f"block {index}: width {att_dim} (input {embed_dim}) is not divisible by {num_heads} heads; "
                    "adjust embed_dim, dim_mul or head_mul"
                )
            self.blocks.append(
                MultiScaleBlock(
                    embed_dim, dim_out, num_heads, mlp_ratio, qkv_bias, drop_path_rates[index], kernel_q[index],
                    kernel_kv[index], stride_q[index], stride_kv[index], mode, cls_embed_on, pool_first,
                    residual_pooling, dim_mul_in_att,
                )
            )
            embed_dim = dim_out

        rows = TokenRows(1.0, 0.0).after_conv(patch_kernel[0], patch_stride[0], patch_padding[0])
        for block in self.blocks:
            pool = block.attn.pool_q
            if pool is not None:
                kernel, stride, padding = (value[0] if isinstance(value, tuple) else value
                                           for value in (pool.kernel_size, pool.stride, pool.padding))
                rows = rows.after_conv(kernel, stride, padding)
        self.token_rows = rows
        self.num_features = embed_dim
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(embed_dim, eps=_LAYER_NORM_EPS)
        self.head_pool_mode = head_pool
        if head_pool == "attention":
            self.head_pool = nn.Linear(embed_dim, 1, bias=False)  # a bias cancels in the softmax
        if len(num_classes) == 1:
            self.head = ClassifierHead(embed_dim, num_classes[0], dropout_rate)
        else:
            self.head = nn.ModuleList(ClassifierHead(embed_dim, n, dropout_rate) for n in num_classes)

        if use_abs_pos:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if cls_embed_on:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> MViT:
        """The MViTv2 of ENCODER.* for spectrograms of AUDIO_DATA.FRAMES0 x NUM_FREQUENCIES, one head per task."""
        enc = cfg.ENCODER
        return cls(
            num_classes=derived.class_counts(cfg),
            embed_dim=enc.EMBED_DIM,
            num_heads=enc.NUM_HEADS,
            depth=enc.DEPTH,
            mlp_ratio=enc.MLP_RATIO,
            qkv_bias=enc.QKV_BIAS,
            drop_path_rate=enc.DROPPATH_RATE,
            dropout_rate=cfg.MODEL.DROPOUT_RATE,
            input_size=(cfg.AUDIO_DATA.FRAMES0, cfg.AUDIO_DATA.NUM_FREQUENCIES),
            patch_kernel=enc.PATCH_KERNEL,
            patch_stride=enc.PATCH_STRIDE,
            patch_padding=enc.PATCH_PADDING,
            dim_mul=enc.DIM_MUL,
            head_mul=enc.HEAD_MUL,
            pool_q_stride=enc.POOL_Q_STRIDE,
            pool_kv_stride=enc.POOL_KV_STRIDE,
            pool_kv_stride_adaptive=enc.POOL_KV_STRIDE_ADAPTIVE,
            pool_kvq_kernel=enc.POOL_KVQ_KERNEL,
            mode=enc.MODE,
            pool_first=enc.POOL_FIRST,
            residual_pooling=enc.RESIDUAL_POOLING,
            dim_mul_in_att=enc.DIM_MUL_IN_ATT,
            use_abs_pos=enc.USE_ABS_POS,
            cls_embed_on=enc.CLS_EMBED_ON,
            input_mean=cfg.AUDIO_DATA.NORM_MEAN,
            input_std=cfg.AUDIO_DATA.NORM_STD,
            head_pool=enc.HEAD_POOL,
            stem_channels=enc.STEM_CHANNELS,
            clip_norm=cfg.AUDIO_DATA.NORM_PER_CLIP,
        )

    def forward_features(self, x: Tensor) -> tuple[Tensor, Grid]:
        """Encode a spectrogram into tokens.

        Args:
            x: Spectrogram ``[B, C, T, F]`` (time is the image height, frequency the width).

        Returns:
            Tokens ``[B, T'' * F'', D]`` after the final LayerNorm, time-major with the frequency index fastest
            (token ``t * F'' + f`` sits at grid cell ``(t, f)``), the cls token removed; and the grid ``(T'', F'')``.

        Raises:
            ValueError: If ``x`` is not ``[B, in_chans, T, F]``, or its patch grid differs from the one the
                absolute position embedding was built for.
        """
        if x.ndim != 4 or x.shape[1] != self.patch_embed.in_chans:
            raise ValueError(
                f"MViT expects a spectrogram [B, {self.patch_embed.in_chans}, T, F], got shape "
                f"{tuple(x.shape)}; add the channel dimension with x.unsqueeze(1)"
            )
        x, grid = self.patch_embed(self.input_norm(x))
        if self.cls_embed_on:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.use_abs_pos:
            if tuple(grid) != self.patch_grid:
                raise ValueError(
                    f"the absolute position embedding was built for a {self.patch_grid} patch grid (input_size), "
                    f"but this input gives {tuple(grid)}; resize the input or rebuild with another input_size"
                )
            x = x + self.pos_embed
        for block in self.blocks:
            x, grid = block(x, grid)
        x = self.norm(x)
        if self.cls_embed_on:
            x = x[:, 1:]
        return x, grid

    def pool(self, tokens: Tensor) -> Tensor:
        """Pool tokens into one vector per clip with ``head_pool``: mean, per-channel max, or attention weights
        ``softmax_n(w . x_n)``.

        Args:
            tokens: ``[B, N, D]`` from :meth:`forward_features`.

        Returns:
            ``[B, D]``.
        """
        if self.head_pool_mode == "max":
            return tokens.amax(dim=1)
        if self.head_pool_mode == "attention":
            weights = torch.softmax(self.head_pool(tokens), dim=1)  # [B, N, 1]
            return (weights * tokens).sum(dim=1)
        return tokens.mean(dim=1)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def no_weight_decay(self) -> set[str]:
        """The cls token and the position embedding (ENCODER.ZERO_DECAY_POS_CLS of the original, always on)."""
        return {name for name, present in (("cls_token", self.cls_embed_on), ("pos_embed", self.use_abs_pos))
                if present}

    def layer_id(self, name: str) -> int:
        """0 the embeddings (patch, cls, position), i + 1 block i, depth + 1 the norm and head."""
        if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers + 1


def _pool_table(
    depth: int, entries: Sequence[Sequence[int]], kernel: Sequence[int] | None
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Per-block (stride, kernel) from ``[block_index, stride_t, stride_f]`` entries; unlisted blocks get ``()``."""
    strides: list[tuple[int, ...]] = [()] * depth
    kernels: list[tuple[int, ...]] = [()] * depth
    for entry in entries:
        index, stride = int(entry[0]), tuple(int(s) for s in entry[1:])
        strides[index] = stride
        kernels[index] = tuple(kernel) if kernel is not None else tuple(s + 1 if s > 1 else s for s in stride)
    return strides, kernels


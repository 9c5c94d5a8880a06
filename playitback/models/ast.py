"""The Audio Spectrogram Transformer (Gong, Chung & Glass, "AST: Audio Spectrogram Transformer", Interspeech 2021),
module for module the layout of Hugging Face ``transformers.ASTModel``, so that the hub's AST weights load as a
PlayItBack encoder (``ENCODER.NAME ast``; :mod:`playitback.models.weights` renames the hub's older key names).

A ViT over overlapping 16x16 patches of the spectrogram (stride 10 in time and frequency), with a cls and a
distillation token in front and a learned absolute position embedding. Its patch tokens are laid out
frequency-major in the position embedding and the attention, as in ``ASTModel``; :meth:`AST.forward_features`
returns them time-major (the encoder contract of :mod:`playitback.models.encoder`). The encoder alone classifies
from the mean of the two summary tokens (``ASTForAudioClassification``); a set of tokens (the slot saliency's pooled
tokens) goes through the same head from its mean.

Shape legend: B batch, T frames, F mel bins, (F'', T'') the patch grid, N = F'' * T'', D width, h heads.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import Tensor, nn

from playitback.config import derived
from playitback.models.encoder import Encoder, Grid, InputNorm, TokenRows, init_weights
from playitback.models.mvit import DropPath

# transformers' ASTConfig.layer_norm_eps.
_LAYER_NORM_EPS = 1e-12
# The summary tokens in front of the patch tokens: cls and distillation.
_SUMMARY_TOKENS = 2


def patch_grid(size: int, kernel: int, stride: int, padding: int) -> int:
    """Patches along one axis of ``size`` bins: ``(size + 2 * padding - kernel) // stride + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


class ASTPatchEmbeddings(nn.Module):
    """A convolution over the spectrogram read as ``[B, 1, F, T]`` (ASTModel's orientation, so its kernel
    ``[D, 1, k_f, k_t]`` loads as it is)."""

    def __init__(self, dim: int, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> None:
        super().__init__()
        kernel_t, kernel_f = kernel
        stride_t, stride_f = stride
        padding_t, padding_f = padding
        self.projection = nn.Conv2d(1, dim, (kernel_f, kernel_t), stride=(stride_f, stride_t),
                                    padding=(padding_f, padding_t))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 1, T, F]`` -> patch tokens ``[B, F'' * T'', D]``, frequency-major."""
        return self.projection(x.transpose(2, 3)).flatten(2).transpose(1, 2)


class ASTEmbeddings(nn.Module):
    def __init__(self, dim: int, grid: Grid, kernel: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int]) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embeddings = ASTPatchEmbeddings(dim, kernel, stride, padding)
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid[0] * grid[1] + _SUMMARY_TOKENS, dim))

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 1, T, F]`` -> ``[B, 2 + N, D]``: cls, distillation, then the patch tokens, position added."""
        patches = self.patch_embeddings(x)
        batch = patches.shape[0]
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), self.distillation_token.expand(batch, -1, -1),
                            patches), dim=1)
        return tokens + self.position_embeddings


class ASTAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AST: width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, L, D] -> [B, L, D]``, full self-attention (scaled dot product, h heads)."""
        batch, length, dim = x.shape

        def heads(linear: nn.Linear) -> Tensor:
            return linear(x).view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj), heads(self.k_proj), heads(self.v_proj))
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, dim))


class ASTMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ASTLayer(nn.Module):
    """Pre-norm transformer layer; ``drop_path`` (stochastic depth, 0 in ASTModel) on both residual branches.

    ASTModel's hidden and attention-probability dropouts are left out: the hub's models were trained with 0 (its
    default), and a dropout on the attention probabilities made a training step of the configs/Small AST 6x slower
    on the CPU (a Bernoulli draw per attention weight and SDPA's unfused path: 2.07 s against 0.34 s for the MViT).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float) -> None:
        super().__init__()
        self.attention = ASTAttention(dim, num_heads, qkv_bias)
        self.layernorm_before = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.layernorm_after = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.mlp = ASTMLP(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attention(self.layernorm_before(x)))
        return x + self.drop_path(self.mlp(self.layernorm_after(x)))


class ASTHead(nn.Module):
    """``ASTMLPHead``: LayerNorm, then a linear classifier (dropout between them while training)."""

    def __init__(self, dim: int, num_classes: int, dropout_rate: float) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout_rate)
        self.dense = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, D] -> [B, K_task]``."""
        return self.dense(self.dropout(self.layernorm(x)))


class AST(Encoder):
    """The Audio Spectrogram Transformer as a PlayItBack encoder for spectrograms ``[B, 1, T, F]`` of a fixed size
    (the position embedding is learned per patch).

    Args:
        num_classes: classes per task; one head per task (``head``, or ``head.{i}`` with several).
        input_size: ``(T, F)``, the spectrogram the position embedding is made for.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the ViT (AST-Base: 768, 12, 12, 4.0, True).
        patch_kernel, patch_stride, patch_padding: the patch convolution, (time, frequency) (AST: 16x16 patches,
            stride 10x10, no padding).
        drop_path_rate: stochastic depth of the last layer, rising linearly from 0.
        dropout_rate: dropout of the head (MODEL.DROPOUT_RATE, as for the MViT).
        input_mean, input_std, clip_norm: the input standardisation (:class:`~playitback.models.encoder.InputNorm`).
            The hub's AudioSet AST was trained on ``(fbank + 4.27) / (2 * 4.57)``: mean -4.2677393, std 9.1379948.
    """

    def __init__(self, *, num_classes: Sequence[int], input_size: tuple[int, int], embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 patch_kernel: Sequence[int] = (16, 16), patch_stride: Sequence[int] = (10, 10),
                 patch_padding: Sequence[int] = (0, 0), drop_path_rate: float = 0.0, dropout_rate: float = 0.0,
                 input_mean: float = 0.0, input_std: float = 1.0, clip_norm: str = "none") -> None:
        super().__init__()
        num_classes = [int(n) for n in num_classes]
        if not num_classes or min(num_classes) < 1:
            raise ValueError(f"num_classes must list at least one positive class count per task, got {num_classes}")
        frames, bins = input_size
        grid_t, grid_f = (patch_grid(size, k, s, p) for size, k, s, p in
                          zip((frames, bins), patch_kernel, patch_stride, patch_padding))
        if grid_t < 1 or grid_f < 1:
            raise ValueError(f"AST: a {frames} x {bins} spectrogram holds no {tuple(patch_kernel)} patch")
        self.input_size = (int(frames), int(bins))
        # (F'', T''): the order of ASTModel's position embedding.
        self.position_grid = (grid_f, grid_t)
        self.input_norm = InputNorm(input_mean, input_std, clip_norm)
        self.embeddings = ASTEmbeddings(embed_dim, self.position_grid, patch_kernel, patch_stride, patch_padding)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.ModuleList(ASTLayer(embed_dim, num_heads, mlp_ratio, qkv_bias, rate) for rate in rates)
        self.layernorm = nn.LayerNorm(embed_dim, eps=_LAYER_NORM_EPS)
        self.token_rows = TokenRows(1.0, 0.0).after_conv(patch_kernel[0], patch_stride[0], patch_padding[0])
        self.num_features = embed_dim
        self.num_classes = num_classes
        heads = [ASTHead(embed_dim, n, dropout_rate) for n in num_classes]
        self.head = heads[0] if len(heads) == 1 else nn.ModuleList(heads)
        self.apply(functools.partial(init_weights, conv=True))
        for token in (self.embeddings.cls_token, self.embeddings.distillation_token,
                      self.embeddings.position_embeddings):
            nn.init.trunc_normal_(token, std=0.02)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> AST:
        """The AST of ENCODER.* (EMBED_DIM, DEPTH, NUM_HEADS, MLP_RATIO, QKV_BIAS, PATCH_*, DROPPATH_RATE) for
        spectrograms of AUDIO_DATA.FRAMES0 x NUM_FREQUENCIES, one head per task."""
        enc = cfg.ENCODER
        return cls(num_classes=derived.class_counts(cfg),
                   input_size=(cfg.AUDIO_DATA.FRAMES0, cfg.AUDIO_DATA.NUM_FREQUENCIES),
                   embed_dim=enc.EMBED_DIM, depth=enc.DEPTH, num_heads=enc.NUM_HEADS, mlp_ratio=enc.MLP_RATIO,
                   qkv_bias=enc.QKV_BIAS, patch_kernel=enc.PATCH_KERNEL, patch_stride=enc.PATCH_STRIDE,
                   patch_padding=enc.PATCH_PADDING, drop_path_rate=enc.DROPPATH_RATE,
                   dropout_rate=cfg.MODEL.DROPOUT_RATE, input_mean=cfg.AUDIO_DATA.NORM_MEAN,
                   input_std=cfg.AUDIO_DATA.NORM_STD, clip_norm=cfg.AUDIO_DATA.NORM_PER_CLIP)

    def encode(self, x: Tensor) -> Tensor:
        """``[B, 1, T, F]`` -> every token after the final LayerNorm, ``[B, 2 + N, D]`` in ASTModel's order (its
        ``last_hidden_state``)."""
        self.check_input(x)
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"AST: the position embedding was built for {self.input_size[0]} x "
                             f"{self.input_size[1]} spectrograms (AUDIO_DATA.FRAMES0 x NUM_FREQUENCIES), got "
                             f"{tuple(x.shape[2:])}")
        x = self.embeddings(self.input_norm(x))
        for layer in self.layers:
            x = layer(x)
        return self.layernorm(x)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Grid]:
        """``[B, 1, T, F]`` -> patch tokens ``[B, T'' * F'', D]`` time-major, and ``(T'', F'')``."""
        grid_f, grid_t = self.position_grid
        patches = self.encode(x)[:, _SUMMARY_TOKENS:]
        tokens = patches.reshape(patches.shape[0], grid_f, grid_t, -1).transpose(1, 2)
        return tokens.flatten(1, 2), (grid_t, grid_f)

    def classify(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder alone: the heads on the mean of the cls and distillation tokens (ASTModel's
        ``pooler_output``), ``(logits [B, K], pooled [B, D])``."""
        pooled = self.encode(x)[:, :_SUMMARY_TOKENS].mean(dim=1)
        heads = self.head if isinstance(self.head, nn.ModuleList) else (self.head,)
        return torch.cat([head(pooled) for head in heads], dim=-1), pooled

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_id(self, name: str) -> int:
        """0 the embeddings, i + 1 layer i, depth + 1 the final norm and the head."""
        if name.startswith("embeddings."):
            return 0
        if name.startswith("layers."):
            return int(name.split(".")[1]) + 1
        return self.num_layers + 1

    def no_weight_decay(self) -> set[str]:
        return {"embeddings.cls_token", "embeddings.distillation_token", "embeddings.position_embeddings"}


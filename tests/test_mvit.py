"""MViTv2 encoder: a slow per-token reference block, token layout, grids, original keys and sizes, compile."""
from __future__ import annotations

import math
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from original_keys import MODELS, original_keys
from playitback.config import load_config
from playitback.models.build import build_encoder
from playitback.models.mvit import (
    DropPath,
    MultiScaleBlock,
    MViT,
    adaptive_kv_stride,
    round_width,
)
from playitback.models.weights import remap_state_dict

# The encoder settings of the original configs (ORIGINAL.md 1.4), written out by hand.
ORIGINAL_B = dict(
    depth=24, drop_path_rate=0.3, dim_mul=[[2, 2.0], [5, 2.0], [21, 2.0]], head_mul=[[2, 2.0], [5, 2.0], [21, 2.0]],
    pool_q_stride=[[i, 2, 2] if i in (2, 5, 21) else [i, 1, 1] for i in range(24)],
    pool_kv_stride_adaptive=[4, 4], pool_kvq_kernel=[3, 3],
)
ORIGINAL_S = dict(
    depth=16, drop_path_rate=0.1, dim_mul=[[1, 2.0], [3, 2.0], [14, 2.0]], head_mul=[[1, 2.0], [3, 2.0], [14, 2.0]],
    pool_q_stride=[[i, 2, 2] if i in (1, 3, 14) else [i, 1, 1] for i in range(16)],
    pool_kv_stride_adaptive=[4, 4], pool_kvq_kernel=[3, 3],
)
ORIGINAL_MODELS = {
    "VGG-Sound/PlayItBackX2": (ORIGINAL_B, [309]),
    "VGG-Sound/PlayItBackX1_S": (ORIGINAL_S, [309]),
    "EPIC-KITCHENS/PlayItBackX2": (ORIGINAL_B, [97, 300]),
}


def tiny_mvit(**overrides) -> MViT:
    """Width 8 -> 16 at block 1 (q-stride 2x2 there), 3 blocks, adaptive KV stride 2x2."""
    kwargs = dict(
        num_classes=[5], embed_dim=8, num_heads=1, depth=3, drop_path_rate=0.0, dropout_rate=0.0,
        dim_mul=[[1, 2.0]], head_mul=[[1, 2.0]], pool_q_stride=[[0, 1, 1], [1, 2, 2], [2, 1, 1]],
        pool_kv_stride_adaptive=[2, 2],
    )
    kwargs.update(overrides)
    return MViT(**kwargs)


@pytest.fixture(scope="module")
def original_encoder_keys() -> dict[str, dict[str, tuple[int, ...]]]:
    """``{model: {encoder key without the prefix: shape}}`` from the original key list."""
    return {name: original_keys(name, "encoder.") for name in MODELS}


# --- slow reference: one block computed token by token from its parameters ---------------------------------------


def _layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _linear(x: Tensor, layer: nn.Linear) -> Tensor:
    return x @ layer.weight.T + layer.bias if layer.bias is not None else x @ layer.weight.T


def _pool_reference(tokens: Tensor, grid: tuple[int, int], kernel, stride, reduce) -> tuple[Tensor, tuple[int, int]]:
    """Pool ``[N, C]`` time-major tokens window by window; ``reduce(values [n, C], offsets) -> [C]``."""
    rows, cols = grid
    pad = [k // 2 for k in kernel]
    out_rows = (rows + 2 * pad[0] - kernel[0]) // stride[0] + 1
    out_cols = (cols + 2 * pad[1] - kernel[1]) // stride[1] + 1
    pooled = []
    for t_out in range(out_rows):
        for f_out in range(out_cols):
            values, offsets = [], []
            for i in range(kernel[0]):
                for j in range(kernel[1]):
                    t, f = t_out * stride[0] - pad[0] + i, f_out * stride[1] - pad[1] + j
                    if 0 <= t < rows and 0 <= f < cols:
                        values.append(tokens[t * cols + f])
                        offsets.append((i, j))
            pooled.append(reduce(torch.stack(values), offsets))
    return torch.stack(pooled), (out_rows, out_cols)


def _reference_block(block: MultiScaleBlock, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """One sample ``[N, dim]`` through an MViTv2 block (conv pooling, residual pooling, dim_mul_in_att)."""
    attn = block.attn
    heads, dim_out = attn.num_heads, attn.dim_out
    x_norm = _layer_norm(x, block.norm1)
    qkv = _linear(x_norm, attn.qkv).reshape(x.shape[0], 3, heads, dim_out // heads)
    head_outputs = []
    for h in range(heads):
        pooled = []
        for which, conv, norm in ((0, attn.pool_q, attn.norm_q), (1, attn.pool_k, attn.norm_k),
                                  (2, attn.pool_v, attn.norm_v)):
            weight = conv.weight[:, 0]  # [d, kt, kf]

            def conv_sum(values: Tensor, offsets, weight=weight) -> Tensor:
                return sum(v * weight[:, i, j] for v, (i, j) in zip(values, offsets))

            tokens, out_grid = _pool_reference(qkv[:, which, h], grid, conv.kernel_size, conv.stride, conv_sum)
            pooled.append((_layer_norm(tokens, norm), out_grid))
        (q, q_grid), (k, _), (v, _) = pooled
        weights = torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1)
        head_outputs.append(weights @ v + q)
    out = _linear(torch.cat(head_outputs, dim=-1), attn.proj)
    skip = _linear(x_norm, block.proj) if block.dim != block.dim_out else x
    if block.pool_skip is not None:
        pool = block.pool_skip
        skip, _ = _pool_reference(skip, grid, pool.kernel_size, pool.stride, lambda v, _: v.max(0).values)
    x = skip + out
    hidden = _linear(_layer_norm(x, block.norm2), block.mlp.fc1)
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    return x + _linear(hidden, block.mlp.fc2), q_grid


@pytest.mark.parametrize("heads,dim_out,stride_q,stride_kv", [(1, 8, (1, 1), (2, 2)), (2, 16, (2, 2), (1, 1))])
def test_block_matches_slow_per_token_reference(heads, dim_out, stride_q, stride_kv) -> None:
    torch.manual_seed(0)
    block = MultiScaleBlock(
        dim=8, dim_out=dim_out, num_heads=heads, mlp_ratio=4.0, qkv_bias=True, drop_path=0.0, kernel_q=(3, 3),
        kernel_kv=(3, 3), stride_q=stride_q, stride_kv=stride_kv, mode="conv", has_cls_embed=False,
        pool_first=False, residual_pooling=True, dim_mul_in_att=True,
    ).eval()
    for p in block.parameters():  # break the symmetry of the default LayerNorm init
        nn.init.normal_(p, std=0.3)
    grid = (7, 5)
    x = torch.randn(2, 35, 8)
    out, out_grid = block(x, grid)
    for sample in range(2):
        expected, expected_grid = _reference_block(block, x[sample], grid)
        assert out_grid == expected_grid
        torch.testing.assert_close(out[sample], expected, rtol=1e-5, atol=1e-5)


# --- shapes, gradients, layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"mode": "avg"},
        {"mode": "max"},
        {"pool_first": True},
        {"dim_mul_in_att": False},
        {"cls_embed_on": True, "use_abs_pos": True, "input_size": (37, 20)},
        {"num_classes": [3, 4], "residual_pooling": False},
        {"head_pool": "max"},
        {"head_pool": "attention"},
        {"stem_channels": [4, 6]},
    ],
    ids=["conv", "avg", "max", "pool_first", "mvitv1_width", "cls_abs_pos", "multitask", "head_max", "head_attention",
         "conv_stem"],
)
def test_forward_backward_every_parameter_gets_a_gradient(overrides) -> None:
    torch.manual_seed(0)
    model = tiny_mvit(**overrides)
    x = torch.randn(2, 1, 37, 20)
    tokens, grid = model.forward_features(x)
    assert grid == (5, 3)  # (37 - 1) // 4 + 1 = 10 -> 5; (20 - 1) // 4 + 1 = 5 -> 3
    assert tokens.shape == (2, 15, model.num_features) and model.num_features == 16
    logits = model(x)
    assert logits.shape == (2, sum(model.num_classes))
    (logits**2).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_pooling_modes_without_parameters() -> None:
    for mode in ("avg", "max"):
        keys = tiny_mvit(mode=mode).state_dict()
        assert not [k for k in keys if re.search(r"attn\.(pool|norm)_", k)], mode


@pytest.mark.parametrize("frames", [1, 4, 5, 37, 64, 101])
@pytest.mark.parametrize("mel_bins", [9, 20])
def test_grid_follows_conv_arithmetic_for_any_length(frames, mel_bins) -> None:
    model = tiny_mvit(depth=4, dim_mul=[[1, 2.0]], head_mul=[[1, 2.0]],
                      pool_q_stride=[[1, 2, 2], [3, 2, 2]]).eval()
    tokens, grid = model.forward_features(torch.randn(1, 1, frames, mel_bins))
    expected = [(frames - 1) // 4 + 1, (mel_bins - 1) // 4 + 1]
    for _ in range(2):  # two q-strides of 2, each a ceil-halving (kernel 3, padding 1)
        expected = [math.ceil(n / 2) for n in expected]
    assert grid == tuple(expected)
    assert tokens.shape == (1, expected[0] * expected[1], 16)


def test_tokens_are_time_major() -> None:
    """With the attention branch silenced, a token only sees its receptive field.

    Grid 16x8 after the patch embed (T=64, F=32), 8x4 after the q-stride. Frames 48..63 reach patch rows >= 12
    (row t covers frames 4t-3..4t+3), then skip max-pool rows >= 6 (row r covers 2r-1..2r+1). With a
    frequency-major layout the changed rows would be the last *columns*, and the check below fails.
    """
    torch.manual_seed(0)
    model = tiny_mvit(depth=1, dim_mul=[[0, 2.0]], head_mul=[[0, 2.0]], pool_q_stride=[[0, 2, 2]]).eval()
    with torch.no_grad():
        model.blocks[0].attn.proj.weight.zero_()
        model.blocks[0].attn.proj.bias.zero_()
    x = torch.randn(1, 1, 64, 32)
    perturbed = x.clone()
    perturbed[:, :, 48:] += torch.randn_like(perturbed[:, :, 48:])
    with torch.no_grad():
        tokens, grid = model.forward_features(x)
        tokens_perturbed, _ = model.forward_features(perturbed)
    assert grid == (8, 4)
    changed = (tokens - tokens_perturbed).abs().amax(-1).reshape(8, 4) > 1e-6
    assert not changed[:6].any()
    assert changed[6:].all()


def test_forward_head_mean_pools_then_projects_each_task() -> None:
    torch.manual_seed(0)
    model = tiny_mvit(num_classes=[3, 4], dropout_rate=0.5).eval()
    tokens = torch.randn(2, 6, model.num_features)
    pooled = tokens.mean(1)
    expected = torch.cat([pooled @ h.projection.weight.T + h.projection.bias for h in model.head], dim=-1)
    torch.testing.assert_close(model.forward_head(tokens), expected)
    x = torch.randn(2, 1, 20, 16)
    torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)[0]))


def test_max_head_pool_reads_the_event_token_whatever_the_clip_length() -> None:
    """One token carries a feature the others lack (an event in background): max pooling passes it at full strength
    for 4 or 400 background tokens, mean pooling dilutes it by the token count."""
    torch.manual_seed(0)
    model = tiny_mvit(head_pool="max").eval()
    mean_model = tiny_mvit().eval()
    dim = model.num_features
    for background in (3, 399):
        tokens = -torch.rand(1, background + 1, dim)  # background features all negative
        event = torch.rand(dim) + 1.0
        tokens[0, background // 2] = event
        torch.testing.assert_close(model.pool(tokens)[0], event)
        assert (mean_model.pool(tokens)[0] - tokens[0].mean(0)).abs().max() < 1e-6
    torch.testing.assert_close(model.forward_head(tokens), model.head.projection(event)[None])


def test_attention_head_pool_is_a_softmax_over_the_linear_score() -> None:
    torch.manual_seed(0)
    model = tiny_mvit(head_pool="attention").eval()
    tokens = torch.randn(2, 7, model.num_features)
    scores = tokens @ model.head_pool.weight[0]  # [B, N]
    expected = (scores.exp()[..., None] * tokens).sum(1) / scores.exp().sum(1, keepdim=True)
    torch.testing.assert_close(model.pool(tokens), expected)
    # A score that prefers one token (here: a large weight on a feature only that token has) selects it.
    with torch.no_grad():
        model.head_pool.weight.zero_()
        model.head_pool.weight[0, 0] = 50.0
    tokens[:, :, 0] = 0.0
    tokens[:, 4, 0] = 1.0
    torch.testing.assert_close(model.pool(tokens), tokens[:, 4], atol=1e-6, rtol=0)
    assert "head_pool.weight" not in tiny_mvit().state_dict()


def test_conv_stem_keeps_the_grid_and_token_rows_and_is_a_conv_gelu_stack() -> None:
    torch.manual_seed(0)
    plain = tiny_mvit().eval()
    stem = tiny_mvit(stem_channels=[4, 6]).eval()
    x = torch.randn(2, 1, 37, 20)
    assert stem.forward_features(x)[1] == plain.forward_features(x)[1] == (5, 3)
    assert stem.token_rows == plain.token_rows
    convs = [m for m in stem.patch_embed.stem if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == \
        [(1, 4, (3, 3), (1, 1)), (4, 6, (3, 3), (1, 1))]
    assert stem.patch_embed.proj.in_channels == 6
    # By hand: conv -> GELU -> conv -> GELU -> patch conv, the same tokens as the module's.
    h = F.gelu(F.conv2d(F.gelu(F.conv2d(x, convs[0].weight, convs[0].bias, padding=1)), convs[1].weight,
                        convs[1].bias, padding=1))
    proj = stem.patch_embed.proj
    expected = F.conv2d(h, proj.weight, proj.bias, stride=proj.stride, padding=proj.padding).flatten(2).transpose(1, 2)
    torch.testing.assert_close(stem.patch_embed(x)[0], expected)
    assert not [k for k in plain.state_dict() if "stem" in k]


def test_initialisation() -> None:
    torch.manual_seed(0)
    model = tiny_mvit(embed_dim=32, depth=1, dim_mul=[], head_mul=[], pool_q_stride=[])
    fc1 = model.blocks[0].mlp.fc1
    assert fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert (module.bias == 0).all()
        if isinstance(module, nn.LayerNorm):
            assert (module.weight == 1).all() and (module.bias == 0).all() and module.eps == 1e-6


def test_input_standardisation_is_the_affine_map_and_not_in_the_state_dict() -> None:
    torch.manual_seed(0)
    plain = tiny_mvit().eval()
    torch.manual_seed(0)
    standardised = tiny_mvit(input_mean=-4.0, input_std=2.5).eval()
    assert standardised.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 1, 32, 16) * 2.5 - 4.0
    torch.testing.assert_close(standardised(x), plain((x + 4.0) / 2.5))
    with pytest.raises(ValueError, match="input_std must be positive"):
        tiny_mvit(input_std=0.0)


def test_clip_norm_removes_each_clips_level_and_scale() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 1, 32, 16)
    level = torch.tensor([-5.0, 0.0, 2.0]).view(3, 1, 1, 1)
    scale = torch.tensor([0.5, 1.0, 3.0]).view(3, 1, 1, 1)
    by_hand = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)
    mean_std = tiny_mvit(clip_norm="mean_std", input_mean=1.0, input_std=2.0).eval()
    torch.testing.assert_close(mean_std.input_norm(x * scale + level), by_hand)
    # A recording level (an additive offset of the log-mel) changes nothing with "mean"; a scale still does.
    mean = tiny_mvit(clip_norm="mean").eval()
    torch.testing.assert_close(mean.input_norm(x + level), x - x.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(mean(x + level), mean(x))
    torch.testing.assert_close(mean_std(x * scale + level), mean_std(x))
    assert not torch.allclose(mean(x * scale), mean(x))
    plain = tiny_mvit().eval()
    torch.testing.assert_close(plain.input_norm(x + level), x + level)
    assert mean_std.state_dict().keys() == plain.state_dict().keys()
    with pytest.raises(ValueError, match="clip_norm"):
        tiny_mvit(clip_norm="per_band")


def test_eval_is_deterministic_and_drop_path_only_trains() -> None:
    torch.manual_seed(0)
    model = tiny_mvit(drop_path_rate=0.9, dropout_rate=0.0)
    x = torch.randn(4, 1, 24, 16)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(x), model(x))

    drop = DropPath(0.5).train()
    out = drop(torch.ones(2000, 3))
    assert set(out.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and rescaled by 1 / keep_prob
    assert (out[:, 0] == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert (out == out[:, :1]).all()  # one decision per sample
    assert torch.equal(drop.eval()(torch.ones(5, 3)), torch.ones(5, 3))


def test_drop_path_rises_linearly() -> None:
    model = tiny_mvit(depth=5, drop_path_rate=0.4, pool_q_stride=[], dim_mul=[], head_mul=[])
    rates = [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0 for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


# --- the original models -------------------------------------------------------------------------------------------


def test_round_width_matches_mvitv2_by_hand() -> None:
    assert round_width(1, 2.0) == 2
    assert round_width(96, 2.0, divisor=4) == 192  # block 2 of B: heads 2, divisor 2 * 2
    assert round_width(100, 1.5, divisor=8) == 152  # 150 + 4 = 154 -> 152
    assert round_width(20, 1.0, divisor=16) == 32  # 16 lost more than 10% of 20, so one divisor is added


def test_adaptive_kv_stride_by_hand() -> None:
    q_strides = [tuple(e) for e in ORIGINAL_B["pool_q_stride"]]
    initial = (4, 4)
    derived = adaptive_kv_stride(24, q_strides, initial)
    expected = [[i, 4, 4] for i in range(2)] + [[i, 2, 2] for i in range(2, 5)] + [[i, 1, 1] for i in range(5, 24)]
    assert derived == expected
    assert initial == (4, 4) and q_strides == [tuple(e) for e in ORIGINAL_B["pool_q_stride"]]
    derived_s = adaptive_kv_stride(16, ORIGINAL_S["pool_q_stride"], [4, 4])
    assert [tuple(e[1:]) for e in derived_s] == [(4, 4)] + [(2, 2)] * 2 + [(1, 1)] * 13
    # Only listed blocks divide the stride; odd strides floor, and it never drops below 1.
    assert adaptive_kv_stride(3, [[1, 3, 2]], [4, 3]) == [[0, 4, 3], [1, 1, 1], [2, 1, 1]]
    # The explicit per-block list builds the same model as the adaptive rule it came from.
    with torch.device("meta"):
        explicit = MViT(num_classes=[2], **{**ORIGINAL_S, "pool_kv_stride_adaptive": None, "pool_kv_stride": derived_s})
    assert [tuple(b.attn.pool_v.stride) for b in explicit.blocks] == [tuple(e[1:]) for e in derived_s]
    # None (the config default) means no explicit list.
    assert len(tiny_mvit(pool_kv_stride=None).blocks) == 3


def test_original_b_structure_and_grids() -> None:
    with torch.device("meta"):
        model = MViT(num_classes=[309], **ORIGINAL_B).eval()
        grids = {frames: model.forward_features(torch.empty(1, 1, frames, 128)) for frames in (400, 200, 133, 100)}
    tokens, grid = grids[400]
    assert grid == (13, 4) and tokens.shape == (1, 52, 768) and model.num_features == 768
    assert {f: g for f, (_, g) in grids.items()} == {400: (13, 4), 200: (7, 4), 133: (5, 4), 100: (4, 4)}
    kv = [tuple(b.attn.pool_k.stride) for b in model.blocks]
    assert kv == [(4, 4)] * 2 + [(2, 2)] * 3 + [(1, 1)] * 19
    heads = [b.attn.num_heads for b in model.blocks]
    assert heads == [1] * 2 + [2] * 3 + [4] * 16 + [8] * 3
    widths = [b.dim_out for b in model.blocks]
    assert widths == [96] * 2 + [192] * 3 + [384] * 16 + [768] * 3


@pytest.mark.parametrize("name", sorted(ORIGINAL_MODELS))
def test_state_dict_matches_original_keys(original_encoder_keys, name) -> None:
    config, num_classes = ORIGINAL_MODELS[name]
    with torch.device("meta"):
        model = MViT(num_classes=num_classes, **config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == original_encoder_keys[name]
    assert list(ours) == list(original_encoder_keys[name])  # same order, too


def test_original_checkpoint_layout_loads_fully_into_an_encoder(original_encoder_keys) -> None:
    """An original PlayItBack state dict (encoder.*) and a bare MViT one both land on every encoder tensor."""
    with torch.device("meta"):
        wrapper = nn.Module()
        wrapper.encoder = MViT(num_classes=[309], **ORIGINAL_B)
        target = wrapper.state_dict()
        for source in (
            {"encoder." + k: torch.empty(shape) for k, shape in original_encoder_keys["VGG-Sound/PlayItBackX2"].items()},
            {k: torch.empty(shape) for k, shape in original_encoder_keys["VGG-Sound/PlayItBackX2"].items()},
        ):
            mapped, report = remap_state_dict(source, target)
            assert sorted(mapped) == sorted(target) and not report.missing and not report.unexpected


@pytest.mark.parametrize(
    "config,num_classes,millions",
    [
        (ORIGINAL_B, [309], 50.76),
        (ORIGINAL_S, [309], 34.22),
        (ORIGINAL_B, [527], 50.93),
        (ORIGINAL_B, [97, 300], 50.83),
    ],
    ids=["B-309", "S-309", "B-527", "B-97+300"],
)
def test_parameter_counts_match_the_original(config, num_classes, millions) -> None:
    with torch.device("meta"):
        model = MViT(num_classes=num_classes, **config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions


# --- variants and argument errors ----------------------------------------------------------------------------------


def _variant_encoder(name: str) -> MViT:
    with torch.device("meta"):
        return build_encoder(load_config(None, ["ENCODER.VARIANT", name, "MODEL.NUM_CLASSES", "2"]))


@pytest.mark.parametrize(("name", "original"), [("mvitv2_b", ORIGINAL_B), ("mvitv2_s", ORIGINAL_S)])
def test_variant_presets_are_the_original_configs(name: str, original: dict) -> None:
    with torch.device("meta"):
        want = MViT(num_classes=[2], **original)
    got = _variant_encoder(name)
    assert {k: v.shape for k, v in got.state_dict().items()} == {k: v.shape for k, v in want.state_dict().items()}
    assert [(b.dim_out, b.attn.num_heads, b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0)
            for b in got.blocks] == [
        (b.dim_out, b.attn.num_heads, b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0)
        for b in want.blocks]


def test_tiny_variant_has_the_paper_stages() -> None:
    tiny = _variant_encoder("mvitv2_t")
    with torch.device("meta"):
        _, grid = tiny.forward_features(torch.empty(1, 1, 400, 128))
    assert len(tiny.blocks) == 10 and tiny.num_features == 768 and grid == (13, 4)
    assert [b.dim_out for b in tiny.blocks] == [96] + [192] * 2 + [384] * 5 + [768] * 2


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="mode"):
        tiny_mvit(mode="lstm")
    with pytest.raises(ValueError, match="head_pool"):
        tiny_mvit(head_pool="median")
    with pytest.raises(ValueError, match="input_size"):
        tiny_mvit(use_abs_pos=True)
    with pytest.raises(ValueError, match="pool_q_stride"):
        tiny_mvit(pool_q_stride=[[3, 2, 2]])
    with pytest.raises(ValueError, match="not both"):
        tiny_mvit(pool_kv_stride=[[0, 2, 2]])
    with pytest.raises(ValueError, match="num_classes"):
        tiny_mvit(num_classes=[])
    with pytest.raises(ValueError, match=r"unsqueeze\(1\)"):
        tiny_mvit()(torch.randn(2, 37, 20))
    with pytest.raises(ValueError, match="input_size"):
        tiny_mvit(use_abs_pos=True, input_size=(37, 20))(torch.randn(1, 1, 64, 20))


# --- compilation ---------------------------------------------------------------------------------------------------


def test_compiles_as_one_graph() -> None:
    """Dynamo captures the whole forward (no graph break, no data-dependent control flow)."""
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available in this torch build")
    torch.manual_seed(0)
    model = tiny_mvit(depth=2, pool_q_stride=[[0, 1, 1], [1, 2, 2]]).eval()
    x = torch.randn(2, 1, 37, 20)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
def test_inductor_compile_and_dynamic_length_export() -> None:
    """Inductor code generation (about 25 s on 2 cores) and an export whose time length stays symbolic."""
    if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        pytest.skip("inductor needs a C++ compiler on the CPU, and none is on PATH")
    torch.manual_seed(0)
    model = tiny_mvit().eval()
    x = torch.randn(2, 1, 37, 20)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-5, atol=1e-5)
    exported = torch.export.export(model, (x,), dynamic_shapes={"x": {2: torch.export.Dim.AUTO}})
    for frames in (9, 61, 400):
        y = torch.randn(2, 1, frames, 20)
        torch.testing.assert_close(exported.module()(y), model(y), rtol=1e-5, atol=1e-5)

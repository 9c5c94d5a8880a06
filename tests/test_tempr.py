"""Tests of the TemPr decoder (playitback/models/tempr.py) at tiny sizes, plus the full-size state-dict layout."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from original_keys import original_keys
from playitback.config.choices import FUSION_LOCATIONS, FUSIONS
from playitback.models.tempr import TemPr, fourier_position_encoding, softmax_fp32

D = 8  # token width of the tiny decoders


def tiny(num_playbacks: int = 2, num_classes: tuple[int, ...] = (5,), **kwargs) -> TemPr:
    """A decoder small enough for a fast CPU test (latent width 16, 8 latents)."""
    args = dict(
        num_playbacks=num_playbacks, input_dim=D, num_classes=num_classes, num_freq_bands=3, num_latents=8,
        latent_dim=16, latent_heads=2, latent_dim_head=8, cross_dim_head=8, self_per_cross_attn=1,
    )
    args.update(kwargs)
    return TemPr(**args)


def tokens(num_playbacks: int, batch: int = 2, grid: tuple[int, int] = (4, 3), seed: int = 0) -> list[torch.Tensor]:
    """Random encoder tokens: ``num_playbacks`` tensors [batch, T'', F'', D] on the given (T'', F'') grid."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *grid, D, generator=gen) for _ in range(num_playbacks)]


@pytest.mark.parametrize("num_playbacks", [1, 2, 3, 4])
@pytest.mark.parametrize("num_classes", [(5,), (3, 4)])
def test_output_shapes_and_task_order(num_playbacks: int, num_classes: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = tiny(num_playbacks, num_classes).eval()
    out = model(tokens(num_playbacks, batch=3))
    k = sum(num_classes)
    assert out.logits.shape == (3, k)
    assert out.playback_logits.shape == (num_playbacks, 3, k)
    assert out.features.shape == (3, 16)
    heads = [model.fc] if len(num_classes) == 1 else list(model.fc)
    expected = torch.cat([h.weight @ out.features.T + h.bias[:, None] for h in heads]).T
    torch.testing.assert_close(out.logits, expected)


def test_batch_items_are_independent() -> None:
    """The batched forward equals a slow per-sample loop."""
    torch.manual_seed(0)
    model = tiny(3, (3, 4)).eval()
    toks = tokens(3, batch=4, grid=(5, 2))
    batched = model(toks)
    for b in range(4):
        single = model([t[b : b + 1] for t in toks])
        for key in ("logits", "features"):
            torch.testing.assert_close(getattr(single, key)[0], getattr(batched, key)[b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single.playback_logits[:, 0], batched.playback_logits[:, b], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("fusion", "fusion_loc", "weight_tie_layers"),
    [(f, loc, False) for f, loc in itertools.product(FUSIONS, FUSION_LOCATIONS)] + [("adaptive", "features", True)],
)
def test_every_parameter_gets_a_gradient(fusion: str, fusion_loc: str, weight_tie_layers: bool) -> None:
    torch.manual_seed(0)
    model = tiny(3, (3, 4), fusion=fusion, fusion_loc=fusion_loc, weight_tie_layers=weight_tie_layers)
    fusion_params = [n for n, _ in model.named_parameters() if n.startswith("fusion.")]
    assert (fusion == "mean") == (not fusion_params)
    out = model(tokens(3))
    # Random weights so that no gradient cancels by symmetry (e.g. through the LayerNorm).
    loss = (out.logits * torch.randn_like(out.logits)).sum()
    loss = loss + (out.playback_logits * torch.randn_like(out.playback_logits)).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_fusion_arithmetic() -> None:
    """Fused logits equal hand-computed combinations of the per-playback outputs."""
    torch.manual_seed(0)
    toks = tokens(3)
    # fc is affine, so the class head of the mean of the features is the mean of the per-playback logits.
    out = tiny(3, fusion="mean", fusion_loc="features").eval()(toks)
    torch.testing.assert_close(out.logits, out.playback_logits.mean(0))
    out = tiny(3, fusion="mean", fusion_loc="predictions").eval()(toks)
    torch.testing.assert_close(out.logits, out.playback_logits.mean(0))

    model = tiny(3, (3, 4), fusion="adaptive", fusion_loc="predictions").eval()
    assert model.fusion[2].weight.shape == (7, 1, 3)  # depthwise over the true total class count
    out = model(toks)
    weight = model.fusion[2].weight[:, 0, :]  # [K, S]
    expected = torch.einsum("sbk,ks->bk", out.playback_logits, weight)
    torch.testing.assert_close(out.logits, expected)

    model = tiny(3, fusion="adaptive", fusion_loc="features").eval()
    reduced = []
    model.reduce.register_forward_hook(lambda mod, args, result: reduced.append(result))
    out = model(toks)
    weight = model.fusion[2].weight  # [L_out, L_in, S]
    expected = torch.einsum("bsi,ois->bo", reduced[0], weight).clamp(min=0)
    torch.testing.assert_close(out.features, expected)
    torch.testing.assert_close(out.logits, model.fc(expected))
    torch.testing.assert_close(out.playback_logits, model.fc(reduced[0]).transpose(0, 1))

    model = tiny(3, fusion="adaptive_concat", fusion_loc="features").eval()
    reduced.clear()
    model.reduce.register_forward_hook(lambda mod, args, result: reduced.append(result))
    out = model(toks)
    hidden = model.fusion[1](reduced[0].flatten(1))
    a, gate = hidden.chunk(2, dim=-1)
    expected = model.fusion[4](a * torch.nn.functional.gelu(gate))
    torch.testing.assert_close(out.features, expected)


def test_weight_tying_shares_modules_after_layer_zero() -> None:
    model = tiny(3, weight_tie_layers=True, self_per_cross_attn=2)
    untied = tiny(3, weight_tie_layers=False, self_per_cross_attn=2)
    assert model.state_dict().keys() == untied.state_dict().keys()
    layers = model.layers
    assert layers[1][0] is layers[2][0] and layers[1][1] is layers[2][1]
    assert layers[1][2][0][0] is layers[1][2][1][0] is layers[2][2][1][0]
    assert layers[0][0] is not layers[1][0] and layers[0][2][0][0] is not layers[0][2][1][0]
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in untied.parameters())


def test_latents_are_kaiming_uniform() -> None:
    torch.manual_seed(0)
    latents = TemPr(num_playbacks=1, input_dim=D, num_classes=[5], num_latents=64, latent_dim=128).latents
    bound = math.sqrt(6 / 128)  # gain sqrt(2) for fan_in = latent_dim
    assert latents.abs().max() <= bound
    assert latents.abs().max() > 0.95 * bound
    assert abs(latents.std().item() - bound / math.sqrt(3)) < 0.05 * bound


def test_fourier_encoding_hand_values() -> None:
    enc = fourier_position_encoding(3, 2, max_freq=10.0, num_freq_bands=6)
    assert enc.shape == (3, 2, 26)
    scales = [1.0, 1.8, 2.6, 3.4, 4.2, 5.0]
    # time index 0 -> x = -1, frequency index 1 -> x = +1
    time_part = [math.sin(-math.pi * s) for s in scales] + [math.cos(-math.pi * s) for s in scales] + [-1.0]
    freq_part = [math.sin(math.pi * s) for s in scales] + [math.cos(math.pi * s) for s in scales] + [1.0]
    torch.testing.assert_close(enc[0, 1], torch.tensor(time_part + freq_part), atol=1e-5, rtol=0)
    # time index 1 -> x = 0: sines 0, cosines 1
    torch.testing.assert_close(enc[1, 0, :13], torch.tensor([0.0] * 6 + [1.0] * 6 + [0.0]), atol=1e-6, rtol=0)


def test_softmax_fp32_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 8, generator=gen) * 4, torch.randn(2, 300, 8, generator=gen) * 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sim = torch.einsum("bid,bjd->bij", q, k)
        assert sim.dtype == torch.bfloat16
        attn = softmax_fp32(sim)
    assert attn.dtype == torch.bfloat16
    torch.testing.assert_close(attn.float().sum(-1), torch.ones(2, 4), atol=1e-2, rtol=0)
    torch.testing.assert_close(attn.float(), torch.softmax(sim.float(), -1), atol=4e-3, rtol=0)


def test_bf16_autocast_forward_matches_fp32() -> None:
    torch.manual_seed(0)
    model = tiny(3, (3, 4)).eval()
    toks = tokens(3)
    ref = model(toks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(toks)
    for key in ("logits", "playback_logits", "features"):
        assert torch.isfinite(getattr(out, key)).all(), key
        torch.testing.assert_close(getattr(out, key).float(), getattr(ref, key), atol=0.03, rtol=0.02)


def test_position_encoding_is_used() -> None:
    """Time order matters with the encoding and not without it (attention over the tokens is order-free)."""
    torch.manual_seed(0)
    toks = tokens(2, grid=(5, 3))
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = [t[:, perm] for t in toks]
    model = tiny(2).eval()
    assert not torch.allclose(model(toks).logits, model(permuted).logits, atol=1e-4)
    plain = tiny(2, fourier_encode_data=False).eval()
    torch.testing.assert_close(plain(toks).logits, plain(permuted).logits, atol=1e-5, rtol=1e-5)


def test_identical_tokens_depend_only_on_grid() -> None:
    torch.manual_seed(0)
    value = torch.randn(D)

    def constant(grid: tuple[int, int]) -> list[torch.Tensor]:
        return [value.expand(2, *grid, D).clone() for _ in range(2)]

    plain = tiny(2, fourier_encode_data=False).eval()
    torch.testing.assert_close(plain(constant((4, 3))).logits, plain(constant((7, 2))).logits)

    model = tiny(2).eval()
    out = model(constant((4, 3))).logits
    assert not torch.allclose(out, model(constant((7, 2))).logits, atol=1e-4)
    # Reference: the same weights without built-in encoding, fed the hand-concatenated [token, encoding] context.
    manual = tiny(2, input_dim=D + 14, fourier_encode_data=False).eval()
    manual.load_state_dict(model.state_dict())
    enc = fourier_position_encoding(4, 3, max_freq=10.0, num_freq_bands=3)
    ctx = [torch.cat([t, enc.expand(2, -1, -1, -1)], dim=-1) for t in constant((4, 3))]
    torch.testing.assert_close(manual(ctx).logits, out)


def test_eval_is_deterministic_and_train_uses_dropout() -> None:
    torch.manual_seed(0)
    model = tiny(2, attn_dropout=0.3, ff_dropout=0.3, fusion_dropout=0.3)
    toks = tokens(2)
    model.eval()
    a, b = model(toks), model(toks)
    for key in ("logits", "playback_logits", "features"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    model.train()
    assert not torch.equal(model(toks).logits, model(toks).logits)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="'mean', 'adaptive', 'adaptive_concat'"):
        tiny(fusion="max")
    with pytest.raises(ValueError, match="'features', 'predictions'"):
        tiny(fusion_loc="logits")
    with pytest.raises(ValueError, match="num_classes"):
        tiny(num_classes=5)
    model = tiny(2)
    with pytest.raises(ValueError, match="num_playbacks=2"):
        model(tokens(3))
    with pytest.raises(ValueError, match=r"tokens\[1\]"):
        model([torch.randn(2, 4, 3, D), torch.randn(2, 12, D)])


def test_torch_compile_fullgraph_and_export() -> None:
    """The decoder captures as one graph (no graph breaks) and exports; the "eager" backend keeps the test fast."""
    torch.manual_seed(0)
    model = tiny(2, (3, 4)).eval()
    toks = tokens(2)
    ref = model(toks)
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this Python/torch build")
    out = torch.compile(model, fullgraph=True, backend="eager")(toks)
    torch.testing.assert_close(out.logits, ref.logits)
    out.logits.sum().backward()
    assert model.latents.grad is not None and model.latents.grad.abs().sum() > 0
    exported = torch.export.export(model, (toks,))
    torch.testing.assert_close(exported.module()(toks).logits, ref.logits)


@pytest.mark.parametrize(
    ("model_name", "num_playbacks", "num_classes"),
    [
        ("VGG-Sound/PlayItBackX2", 3, (309,)),
        ("VGG-Sound/PlayItBackX1_S", 2, (309,)),
        ("EPIC-KITCHENS/PlayItBackX2", 3, (97, 300)),
    ],
)
def test_state_dict_matches_original(model_name: str, num_playbacks: int, num_classes: tuple[int, ...]) -> None:
    expected = original_keys(model_name, "decoder.")
    with torch.device("meta"):
        model = TemPr(num_playbacks=num_playbacks, input_dim=768, num_classes=num_classes)
    got = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert list(got) == list(expected)
    assert got == expected

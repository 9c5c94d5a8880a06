"""Temporal saliency: slot attention against a slow reference, trainability, determinism, pooling by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from original_keys import MODELS, original_keys
from playitback.models.encoder import TokenRows
from playitback.models.saliency import (
    SlotAttention,
    TemporalSaliency,
    masked_token_pool,
    saliency_contrast,
    saliency_mask,
    temporal_profile,
)
from playitback.models.weights import remap_state_dict

# Tiny sizes keep every test well under a second: D token width, T0 frames, W slot resolution, grid T'' x F''.
D, T0, W, T_TOK, F_TOK = 16, 40, 24, 5, 3
# Token row t centred on frame 8 t + 2 (as a patch stride of 8 would place it).
ROWS = TokenRows(stride=8.0, offset=2.0)


def tiny_saliency(seed: int = 0) -> TemporalSaliency:
    torch.manual_seed(seed)
    return TemporalSaliency(token_dim=D, frames0=T0, resolution=W)


def random_tokens(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, T_TOK, F_TOK, D, generator=torch.Generator().manual_seed(seed))


def reference_slot_attention(module: SlotAttention, inputs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Slot attention written out per sample and per slot with explicit LayerNorm, softmax and GRU formulas."""

    def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)
        return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight + norm.bias

    def gru(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        cell = module.gru
        gi = x @ cell.weight_ih.T + cell.bias_ih
        gh = h @ cell.weight_hh.T + cell.bias_hh
        (ir, iz, i_n), (hr, hz, hn) = gi.chunk(3, -1), gh.chunk(3, -1)
        reset, update = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        candidate = torch.tanh(i_n + reset * hn)
        return (1 - update) * candidate + update * h

    def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
        return x @ layer.weight.T + layer.bias

    outputs = []
    for b in range(inputs.shape[0]):
        slots = module.slots_mu[0] + module.slots_sigma[0].abs() * (module.anchor[0] + noise[b])  # [K, W]
        x = layer_norm(inputs[b], module.norm_input)
        keys, values = linear(x, module.to_k), linear(x, module.to_v)
        for _ in range(module.iters):
            queries = linear(layer_norm(slots, module.norm_slots), module.to_q)
            logits = queries @ keys.T / module.dim**0.5  # [K, N]
            attn = torch.exp(logits) / torch.exp(logits).sum(0, keepdim=True) + module.eps
            attn = attn / attn.sum(1, keepdim=True)
            new_slots = []
            for k in range(module.num_slots):
                update = (attn[k][:, None] * values).sum(0)
                new_slots.append(gru(update, slots[k]))
            slots = torch.stack(new_slots)
            hidden = torch.relu(linear(layer_norm(slots, module.norm_pre_ff), module.fc1))
            slots = slots + linear(hidden, module.fc2)
        outputs.append(slots)
    return torch.stack(outputs)


def test_slot_attention_matches_slow_reference() -> None:
    torch.manual_seed(0)
    module = SlotAttention(num_slots=3, dim=12, iters=3, hidden_dim=20).double()
    inputs = torch.randn(2, 7, 12, dtype=torch.float64)
    noise = torch.randn(2, 3, 12, dtype=torch.float64)
    want = reference_slot_attention(module, inputs, noise)
    assert torch.allclose(module(inputs, noise), want, atol=1e-10)
    # Eval mode starts every slot at its mean, i.e. zero noise.
    module.eval()
    assert torch.allclose(module(inputs), reference_slot_attention(module, inputs, torch.zeros_like(noise)), atol=1e-10)


def test_saliency_gives_a_gradient_to_every_parameter() -> None:
    model = tiny_saliency().train()
    tokens = random_tokens(4)  # frozen encoder output: requires_grad is False
    head = torch.nn.Linear(D, 5).requires_grad_(False)
    labels = torch.tensor([0, 3, 1, 4])
    saliency, _ = model(tokens, ROWS)
    positive, negative = saliency_contrast(tokens, saliency, ROWS)
    logits_pos, logits_neg = head(positive), head(negative)
    true_pos = logits_pos.softmax(-1).gather(1, labels[:, None])
    true_neg = logits_neg.softmax(-1).gather(1, labels[:, None])
    # A margin of 1 on probabilities can never be met, so the hinge is active for every sample.
    loss = F.cross_entropy(logits_pos, labels) + F.relu(1.0 - (true_pos - true_neg)).mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
        assert torch.isfinite(parameter.grad).all(), name
    assert len(list(model.parameters())) == 24  # every entry of the original state dict


def test_eval_is_deterministic_and_training_is_not() -> None:
    model = tiny_saliency()
    tokens = random_tokens(3)
    model.eval()
    first, slots = model(tokens, ROWS)
    second, _ = model(tokens, ROWS)
    assert torch.equal(first, second)
    # The fixed per-slot anchors keep the two slots apart, so eval saliency is not degenerate.
    assert not torch.allclose(slots[:, 0], slots[:, 1])
    model.train()
    assert not torch.equal(model(tokens, ROWS)[0], model(tokens, ROWS)[0])


def test_saliency_is_min_max_normalised_per_sample() -> None:
    model = tiny_saliency().eval()
    tokens = random_tokens(3) * torch.tensor([1.0, 10.0, 0.01]).view(3, 1, 1, 1)
    saliency, slots = model(tokens, ROWS)
    assert saliency.shape == (3, T0) and slots.shape == (3, 2, W)
    assert torch.equal(saliency.amin(1), torch.zeros(3)) and torch.equal(saliency.amax(1), torch.ones(3))
    mask = saliency_mask(saliency)
    assert mask.any(1).all() and not mask.all(1).any()


def test_constant_saliency_is_zero_and_replays_the_whole_clip() -> None:
    model = tiny_saliency().eval()
    with torch.no_grad():
        model.slot_attention.slots_sigma.zero_()  # both slots start at mu, so slot0 - slot1 is exactly 0
    saliency, _ = model(random_tokens(2), ROWS)
    assert torch.equal(saliency, torch.zeros(2, T0))
    assert saliency_mask(saliency).all()


def test_saliency_mask_by_hand() -> None:
    saliency = torch.tensor([[0.0, 1.0, 0.2, 0.6], [0.5, 0.5, 0.5, 0.5]])
    # Row 0: mean 0.45, so frames 1 and 3; row 1 is constant and falls back to the whole clip.
    assert saliency_mask(saliency).tolist() == [[False, True, False, True], [True, True, True, True]]


def test_samples_are_independent_in_eval_mode() -> None:
    model = tiny_saliency().eval()
    tokens = random_tokens(3)
    changed = tokens.clone()
    changed[1] = 100.0 * torch.randn(T_TOK, F_TOK, D)
    got, got_slots = model(changed, ROWS)
    want, want_slots = model(tokens, ROWS)
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
    assert torch.equal(got_slots[0], want_slots[0])
    assert not torch.equal(got[1], want[1])


def test_temporal_profile_matches_numpy_interpolation() -> None:
    tokens = random_tokens(2)
    profile = temporal_profile(tokens, T0, ROWS)
    # Row t sits on frame 8 t + 2; frames between two row centres interpolate linearly, frames beyond the ends take
    # the end row (np.interp's clamping).
    rows = tokens.mean(2).numpy()  # [B, T'', D]
    centres = 2.0 + 8.0 * np.arange(T_TOK)
    want = np.stack(
        [np.stack([np.interp(np.arange(T0), centres, rows[b, :, d]) for d in range(D)], -1) for b in range(2)]
    )
    assert profile.shape == (2, D, T0)
    assert np.allclose(profile.transpose(1, 2).numpy(), want, atol=1e-5)


def test_profile_rows_sit_where_the_encoder_puts_them() -> None:
    """A real MViT's row geometry: a token row that fires on a few input frames peaks at those frames."""
    from playitback.models.mvit import MViT

    encoder = MViT(num_classes=[3], embed_dim=8, num_heads=1, depth=2, input_size=(64, 16),
                   pool_q_stride=[[1, 2, 2]], pool_kv_stride_adaptive=[4, 4])
    # Patch 7/4 (centre 4 r - 3 + 3) then a query pooling 3/2 (centre 2 q - 1 + 1): row t on frame 8 t.
    assert encoder.token_rows == TokenRows(8.0, 0.0)
    spectrogram = torch.zeros(1, 1, 64, 16)
    spectrogram[:, :, 40] = 1.0
    patch_response = encoder.patch_embed(spectrogram)[0].abs().sum(-1).reshape(16, 4).sum(1)  # [T']
    assert int(patch_response.argmax()) == 10  # patch row r centred on frame 4 r
def test_saliency_follows_time_not_frequency() -> None:
    model = tiny_saliency().eval()
    pattern = random_tokens(1).abs() * 5
    early = torch.zeros(1, T_TOK, F_TOK, D)
    late = torch.zeros(1, T_TOK, F_TOK, D)
    early[:, :2] = pattern[:, :2]
    late[:, -2:] = pattern[:, :2]
    # Time rows really are time: the early tokens light up the first frames only, the late ones the last frames.
    early_profile, late_profile = temporal_profile(early, T0, ROWS)[0], temporal_profile(late, T0, ROWS)[0]  # [D, T0]
    assert early_profile[:, 25:].abs().max() == 0 and early_profile[:, :10].abs().min() > 0
    assert late_profile[:, :15].abs().max() == 0 and late_profile[:, -10:].abs().min() > 0
    assert not torch.allclose(model(early, ROWS)[0], model(late, ROWS)[0], atol=1e-3)
    # Permuting the frequency axis leaves the saliency unchanged: only the time axis carries position.
    shuffled = early[:, :, torch.randperm(F_TOK, generator=torch.Generator().manual_seed(3))]
    assert torch.allclose(model(shuffled, ROWS)[0], model(early, ROWS)[0], atol=1e-5)


def test_masked_token_pool_by_hand() -> None:
    # Grid T''=2 x F''=2, D=2. Row 0 tokens: [1, 3] and [-1, 1] (mean [2, 0]); row 1: [10, 20], [0, 4] (mean [15, 2]).
    tokens = torch.tensor([[[[1.0, -1.0], [3.0, 1.0]], [[10.0, 0.0], [20.0, 4.0]]]])
    rows = TokenRows(stride=2.0, offset=0.0)  # rows on frames 0 and 2
    # T0 = 4 frames interpolate from the rows with shares [1, 0], [.5, .5], [0, 1], [0, 1]; the weights go back the
    # same way: row 0 gets (0.2 + 0.5 * 0.6) / 1.5, row 1 gets (0.5 * 0.6 + 1.0 + 0.0) / 2.5.
    weights = torch.tensor([[0.2, 0.6, 1.0, 0.0]])
    row0, row1 = 0.5 / 1.5, 1.3 / 2.5
    want = (row0 * torch.tensor([2.0, 0.0]) + row1 * torch.tensor([15.0, 2.0])) / (row0 + row1)
    assert torch.allclose(masked_token_pool(tokens, weights, rows)[0], want)
    # Zero weights give zeros, not NaN.
    assert torch.equal(masked_token_pool(tokens, torch.zeros(1, 4), rows), torch.zeros(1, 2))
    positive, negative = saliency_contrast(tokens, weights, rows)
    assert torch.equal(positive, masked_token_pool(tokens, weights, rows))
    assert torch.allclose(negative, masked_token_pool(tokens, 1 - weights, rows))


def test_bad_token_layout_names_the_fix() -> None:
    model = tiny_saliency()
    with pytest.raises(ValueError, match="grid"):
        model(torch.zeros(2, T_TOK * F_TOK, D), ROWS)
    with pytest.raises(ValueError, match="num_slots"):
        TemporalSaliency(D, T0, W, num_slots=1)


def original_saliency_entry() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of `saliency_slots.0.*` in the first model of the original key list."""
    return original_keys(MODELS[0], "saliency_slots.0.")


def test_original_saliency_weights_load_under_the_module_names() -> None:
    want = original_saliency_entry()
    assert len(want) == 24 and all(key.startswith(("0.", "3.")) for key in want)
    torch.manual_seed(0)
    source = {f"saliency_slots.0.{key}": torch.randn(shape) for key, shape in want.items()}
    model = torch.nn.Module()
    model.saliencies = torch.nn.ModuleList([TemporalSaliency(768, 400, 400)])
    mapped, report = remap_state_dict(source, model.state_dict())
    assert not report.missing and not report.unexpected and not report.shape_mismatch and not report.remapped
    model.load_state_dict(mapped, strict=True)
    saliency = model.saliencies[0]
    assert torch.equal(saliency.position_embed.embedding.weight, source["saliency_slots.0.0.embedding.weight"])
    assert torch.equal(saliency.slot_attention.gru.weight_hh, source["saliency_slots.0.3.gru.weight_hh"])
    # Same tensors in the same order, so an original optimiser state lines up too.
    assert [tuple(v.shape) for v in saliency.state_dict().values()] == list(want.values())


def test_saliency_compiles_fullgraph() -> None:
    dynamo = pytest.importorskip("torch._dynamo")
    if not dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this Python/platform")
    dynamo.reset()
    model = tiny_saliency().eval()
    tokens = random_tokens(2)
    # aot_eager captures the same full graph as inductor without a C++ build (seconds instead of a minute).
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=False)
    got, got_slots = compiled(tokens, ROWS)
    want, want_slots = model(tokens, ROWS)
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(got_slots, want_slots, atol=1e-6)
    mask = torch.compile(saliency_mask, fullgraph=True, backend="aot_eager", dynamic=False)(want)
    assert torch.equal(mask, saliency_mask(want))


def test_attention_readout_equals_a_per_channel_reference() -> None:
    """The attention readout is the attention-weighted mean of the standardised channel profiles (without the position
    embedding), positive slot minus negative slot, computed here channel by channel and frame by frame."""
    torch.manual_seed(0)
    module = TemporalSaliency(token_dim=6, frames0=8, resolution=8).eval()
    tokens = torch.randn(2, 4, 3, 6)
    saliency, _ = module(tokens, ROWS)
    profile = temporal_profile(tokens, 8, ROWS)  # [B, D, T0]
    _, attn, _ = module.slot_attention(module.position_embed(profile), return_attention=True)
    for b in range(2):
        raw = []
        for t in range(8):
            value = 0.0
            for d in range(6):
                channel = profile[b, d]
                mean = channel.mean()
                std = ((channel - mean) ** 2).mean().add(1e-5).sqrt()
                value += float((attn[b, 0, d] - attn[b, 1, d]) * (channel[t] - mean) / std)
            raw.append(value)
        raw = torch.tensor(raw)
        expected = (raw - raw.min()) / (raw.max() - raw.min())
        torch.testing.assert_close(saliency[b], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("readout", ["attention", "slots"])
def test_both_readouts_train_every_parameter(readout: str) -> None:
    torch.manual_seed(1)
    module = TemporalSaliency(token_dim=12, frames0=16, resolution=16, readout=readout).train()
    tokens = torch.randn(3, 4, 2, 12)
    head = torch.nn.Linear(12, 5)
    saliency, _ = module(tokens, ROWS)
    positive, negative = saliency_contrast(tokens, saliency, ROWS)
    loss = torch.nn.functional.cross_entropy(head(positive), torch.tensor([0, 1, 2])) + head(negative).mean()
    loss.backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="readout must be one of"):
        TemporalSaliency(token_dim=12, frames0=16, resolution=16, readout="peaks")

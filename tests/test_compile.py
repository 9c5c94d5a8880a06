"""The whole PlayItBack forward compiles as one graph (no graph break, no host sync) and exports.

``torch.compile(fullgraph=True)`` fails on any graph break: a ``.item()``, ``.tolist()`` or ``.nonzero()`` (host
synchronisation), Python control flow on tensor values, or an unsupported call. Graph capture is dynamo's job, so the
"eager" backend (capture, then run the captured graph) proves it fastest. "aot_eager" adds AOT autograd's joint
forward/backward trace as inductor does, without a C++ toolchain or code generation; it and inductor take tens of
seconds on 2 cores, so they run behind ``@pytest.mark.slow``. The compiled outputs are compared with the
eager model's under the same seed, in eval mode and in train mode (where the slot noise and dropout draw random
numbers, so equal outputs also show that the random draws happen in the same order).

Shapes: B batch, S playbacks, T0 frames of playback 0, F mel bins, K classes.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from engine_utils import TINY_MODEL
from playitback.config import derived, load_config
from playitback.models import build_model
from playitback.models.output import ModelOutput

dynamo = pytest.importorskip("torch._dynamo")
REPO = Path(__file__).resolve().parents[1]
BATCH = 2


def tiny_model(cfg_name: str, extra: tuple[str, ...] = ()) -> tuple[nn.Module, list[Tensor]]:
    """A seeded tiny model of a Demo config and its input: S playbacks [B, T0 * (i + 1), F]."""
    if not dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this Python/platform")
    cfg = load_config(str(REPO / "configs" / "Demo" / cfg_name), [*TINY_MODEL, *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    generator = torch.Generator().manual_seed(1)
    frames0, mels = cfg.AUDIO_DATA.FRAMES0, cfg.AUDIO_DATA.NUM_FREQUENCIES
    playbacks = [torch.randn(BATCH, frames0 * (i + 1), mels, generator=generator)
                 for i in range(derived.num_playbacks(cfg))]
    return model, playbacks


def run_seeded(model: nn.Module, playbacks: list[Tensor], seed: int = 7) -> ModelOutput:
    """The model's outputs with the global RNG at `seed` (train mode draws slot noise and dropout)."""
    torch.manual_seed(seed)
    return model(playbacks)


def assert_outputs_equal(compiled: ModelOutput, eager: ModelOutput, saliency_atol: float = 1e-5) -> None:
    """The same fields set, and every output equal to the eager one (float outputs within fp32 round-off; the saliency
    within `saliency_atol`)."""
    assert isinstance(compiled, ModelOutput) and isinstance(eager, ModelOutput)
    for field in dataclasses.fields(eager):
        value, other = getattr(eager, field.name), getattr(compiled, field.name)
        assert (value is None) == (other is None), field.name
        if value is not None:
            atol = saliency_atol if field.name == "saliency" else 1e-5
            torch.testing.assert_close(other, value, rtol=1e-5, atol=atol, msg=f"output {field.name!r} differs")


def compile_fullgraph(model: nn.Module, backend: str = "eager") -> nn.Module:
    """``torch.compile`` that raises on any graph break, with static shapes and a fresh dynamo cache."""
    dynamo.reset()
    return torch.compile(model, fullgraph=True, backend=backend, dynamic=False)


def test_playitback_eval_forward_compiles_and_matches_eager() -> None:
    model, playbacks = tiny_model("PlayItBackX2.yaml")
    model.eval()
    compiled = compile_fullgraph(model)
    with torch.no_grad():
        assert_outputs_equal(compiled(playbacks), model(playbacks))


@pytest.mark.parametrize(("saliency", "freeze_encoder", "backend"), [
    ("slots", True, "eager"),
    ("evidence", False, "eager"),
    pytest.param("slots", True, "aot_eager", marks=pytest.mark.slow),
    pytest.param("evidence", False, "aot_eager", marks=pytest.mark.slow),
], ids=["slots-frozen_encoder-eager", "evidence-trained_encoder-eager", "slots-frozen_encoder-aot_eager",
        "evidence-trained_encoder-aot_eager"])
def test_playitback_train_forward_and_backward_compile_and_match_eager(saliency: str, freeze_encoder: bool,
                                                                       backend: str) -> None:
    """Train mode: the saliency's reparameterised slot noise (or the evidence head's top-k), drop path and dropout are
    inside the graph, and the backward (AOT autograd) gives the eager gradients."""
    model, playbacks = tiny_model("PlayItBackX2.yaml", ("SALIENCY.METHOD", saliency,
                                                        "MODEL.FREEZE_ENCODER", str(freeze_encoder)))
    model.train()
    compiled = compile_fullgraph(model, backend)
    compiled_out = run_seeded(compiled, playbacks)
    eager_out = run_seeded(model, playbacks)
    assert_outputs_equal(compiled_out, eager_out)

    def gradients(outputs: ModelOutput) -> dict[str, Tensor]:
        model.zero_grad(set_to_none=True)
        objective = (outputs.evidence_probs.mean() if outputs.evidence_probs is not None else
                     outputs.pos_logits.mean() - outputs.neg_logits.mean())
        (outputs.logits.square().mean() + objective).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    compiled_grads = gradients(compiled_out)
    eager_grads = gradients(eager_out)
    assert compiled_grads.keys() == eager_grads.keys()
    assert any(name.startswith("saliencies.") for name in eager_grads), "the saliency got no gradient"
    assert any(name.startswith("encoder.") for name in eager_grads) == (not freeze_encoder)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")


def test_encoder_only_forward_compiles_in_train_and_eval() -> None:
    model, playbacks = tiny_model("MViT_pretrain.yaml")
    compiled = compile_fullgraph(model)
    for train in (True, False):
        model.train(train)
        with torch.set_grad_enabled(train):
            assert_outputs_equal(run_seeded(compiled, playbacks), run_seeded(model, playbacks))


def test_torch_export_of_the_eval_forward_matches_eager() -> None:
    """torch.export traces with no Python fallback at all: a strict proof that the forward is one static graph."""
    model, playbacks = tiny_model("PlayItBackX2.yaml")
    model.eval()
    exported = torch.export.export(model, (playbacks,))
    generator = torch.Generator().manual_seed(5)
    fresh = [torch.randn(p.shape, generator=generator) for p in playbacks]  # not the traced values
    with torch.no_grad():
        assert_outputs_equal(exported.module()(fresh), model(fresh))


@pytest.mark.slow
def test_inductor_eval_forward_matches_eager() -> None:
    """Inductor code generation on the CPU (tens of seconds on 2 cores)."""
    if not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        pytest.skip("inductor needs a C++ compiler on the CPU, and none is on PATH")
    model, playbacks = tiny_model("PlayItBackX2.yaml")
    model.eval()
    compiled = compile_fullgraph(model, backend="inductor")
    with torch.no_grad():
        # Inductor's fused kernels round differently, and the saliency's per-sample min-max normalisation divides by
        # the curve's range, which scales that round-off (measured: 8.5e-5 at most, logits within 1.2e-7). What the
        # saliency decides, the replayed frames, must not change at all.
        compiled_out, eager_out = compiled(playbacks), model(playbacks)
        assert torch.equal(compiled_out.replay_masks, eager_out.replay_masks)
        assert_outputs_equal(compiled_out, eager_out, saliency_atol=5e-4)

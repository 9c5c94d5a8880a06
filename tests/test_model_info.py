"""tools/model_info.py: parameter counts against sum(p.numel()) and FLOPs against hand-computed multiply-adds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine_utils import TINY_MODEL
from playitback.config import derived, load_config
from playitback.models import build_model
from playitback.models.build import build_encoder
from playitback.utils.flops import count_flops

REPO = Path(__file__).resolve().parents[1]

import model_info  # noqa: E402

CFG = str(REPO / "configs" / "Demo" / "PlayItBackX2.yaml")
# The slot saliency on a frozen encoder: its encoder-head calls and trainable counts can be counted by hand.
SLOT_RECIPE = [*TINY_MODEL, "SALIENCY.METHOD", "slots", "SALIENCY.BUDGET", "0.0", "MODEL.FREEZE_ENCODER", "True"]


@pytest.fixture(scope="module")
def tiny_info() -> dict:
    """model_info of the tiny PlayItBackX2 (3 playbacks, slot saliency, frozen encoder) for a batch of 2."""
    torch.manual_seed(0)
    return model_info.model_info(load_config(CFG, SLOT_RECIPE), batch=2)


def test_linear_flops_are_the_hand_computed_multiply_adds() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    report = count_flops(model, (torch.randn(3, 8),))
    assert report.by_module["0"] == 3 * 8 * 16
    assert report.by_module["2"] == 3 * 16 * 4
    assert report.total == 3 * (8 * 16 + 16 * 4)


class _Attention(nn.Module):
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [B, h, L, E], k [B, h, M, E], v [B, h, M, Ev] -> [B, h, L, Ev]."""
        return F.scaled_dot_product_attention(q, k, v)


def test_attention_flops_count_both_matrix_products() -> None:
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 6)
    report = count_flops(_Attention(), (q, k, v))
    assert report.total == 2 * 3 * 5 * 7 * 4 + 2 * 3 * 5 * 7 * 6  # Q K^T, then A V
    assert "aten::scaled_dot_product_attention" not in report.unsupported


def test_parameter_counts_match_the_model(tiny_info: dict) -> None:
    model = build_model(load_config(CFG, SLOT_RECIPE))
    params = tiny_info["params"]
    assert params["total"]["total"] == sum(p.numel() for p in model.parameters())
    assert params["total"]["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    for name, child in model.named_children():
        assert params[name]["total"] == sum(p.numel() for p in child.parameters())
    assert params["encoder"]["trainable"] == 0  # frozen in stage 2
    assert sum(params[name]["total"] for name, _ in model.named_children()) == params["total"]["total"]


def test_inputs_are_built_like_the_dataset(tiny_info: dict) -> None:
    cfg = load_config(CFG, TINY_MODEL)
    frames0 = cfg.AUDIO_DATA.FRAMES0
    assert tiny_info["input_shapes"] == [[2, frames0 * (i + 1), cfg.AUDIO_DATA.NUM_FREQUENCIES] for i in range(3)]


def test_stage_flops_add_up_and_the_head_matches_a_hand_count(tiny_info: dict) -> None:
    """The encoder head is a Linear called on the positive and the negative pooled tokens of every playback, so its
    FLOPs are 2 * S * B * D * K; the encoder module's FLOPs are S feature passes plus those head calls; the stages sum
    to the total."""
    cfg = load_config(CFG, SLOT_RECIPE)
    playbacks, batch = 3, 2
    width, classes = build_encoder(cfg).num_features, cfg.MODEL.NUM_CLASSES
    head_calls = 2 * playbacks * batch * width * classes
    flops = tiny_info["flops"]
    assert flops["encoder_passes"] == playbacks * flops["encoder_pass"]
    assert flops["encoder_head"] == head_calls
    assert tiny_info["flops_by_module"]["encoder"] == flops["encoder_passes"] + head_calls
    stages = flops["encoder_passes"] + head_calls + flops["decoder"] + flops["other"]
    assert stages + sum(flops[f"saliency_{i}"] for i in range(playbacks)) == flops["total"]
    assert flops["decoder"] > 0 and flops["saliency_0"] > 0


def test_cli_prints_json_and_names_a_bad_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert model_info.main(["--cfg", CFG, "--json", *TINY_MODEL, "MODEL.PLAYBACK", "0", "MODEL.IGNORE_DECODER",
                            "True", "DECODER.DEPTH", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    # Encoder only: one feature pass on playback 0, then the head (a Linear on the pooled tokens, B * D * K).
    head = 1 * 16 * 4
    assert info["flops"]["encoder_head"] == head
    assert info["flops"]["total"] == info["flops"]["encoder_pass"] + head
    assert info["input_shapes"] == [[1, 16, 128]]
    assert model_info.main(["--cfg", CFG, "ENCODER.DEPHT", "2"]) == 2
    assert "ENCODER.DEPTH" in capsys.readouterr().err


def test_example_playbacks_have_the_shapes_the_pyramid_renders() -> None:
    """The inputs used for tracing, FLOP counts and benchmarks are shaped like the real front-end's output."""
    from playitback.data.build import build_pyramid
    from playitback.models.build import example_playbacks

    cfg = load_config(CFG, TINY_MODEL)
    rendered = build_pyramid(cfg)(torch.zeros(3, derived.clip_samples(cfg)))
    examples = example_playbacks(cfg, 3, generator=torch.Generator().manual_seed(0))
    assert [e.shape for e in examples] == [r.shape for r in rendered]
    again = example_playbacks(cfg, 3, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(examples, again))

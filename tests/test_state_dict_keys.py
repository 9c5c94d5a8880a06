"""The whole model's state-dict keys and shapes equal those of the original PlayItBack checkpoints (so they load),
checked against tests/fixtures/original_state_dict_keys.txt."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from original_keys import MODELS, original_keys
from playitback.config import load_config
from playitback.models import build_model
from playitback.models.weights import from_original_key, remap_state_dict

REPO = Path(__file__).resolve().parents[1]
# The original kept a LayerNorm named `norm` that it never used; it is not part of this model.
DEAD_KEYS = {"norm.weight", "norm.bias"}


@pytest.mark.parametrize("model_name", MODELS)
def test_keys_and_shapes_equal_the_original(model_name: str) -> None:
    # The module tree names what the original indexed (saliency_slots.{i}.0 / .3); the key mapper translates.
    reference = {from_original_key(k): shape for k, shape in original_keys(model_name).items()}
    assert any(k.startswith("saliencies.") for k in reference) and not any("saliency_slots" in k for k in reference)
    cfg = load_config(REPO / "configs" / f"{model_name}.yaml", ["NUM_GPUS", "0"])
    with torch.device("meta"):
        model = build_model(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(reference) - set(ours) == DEAD_KEYS
    assert set(ours) <= set(reference)
    assert {k: reference[k] for k in ours} == ours


def test_original_checkpoint_maps_onto_the_model() -> None:
    reference = original_keys("VGG-Sound/PlayItBackX1_S")
    cfg = load_config(REPO / "configs/VGG-Sound/PlayItBackX1_S.yaml", ["NUM_GPUS", "0"])
    with torch.device("meta"):
        model = build_model(cfg)
        source = {k: torch.empty(shape) for k, shape in reference.items()}
        mapped, report = remap_state_dict(source, model.state_dict())
    assert not report.missing and not report.shape_mismatch and not report.remapped
    assert set(report.unexpected) == DEAD_KEYS
    # A bare MViT checkpoint (encoder pretraining of the original) maps under "encoder.".
    bare = {k[len("encoder."):]: v for k, v in source.items() if k.startswith("encoder.")}
    with torch.device("meta"):
        mapped, report = remap_state_dict(bare, model.state_dict())
    assert report.remapped and all(k.startswith("encoder.") for k in mapped)
    assert len(mapped) == len(bare)

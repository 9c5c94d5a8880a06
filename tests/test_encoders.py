"""The encoder and saliency contracts (playitback/models/encoder.py, saliency_interface.py), checked once for every
registered encoder and saliency: shapes and the token grid, where the token rows sit, the input standardisation,
gradients, layer ids for layer decay, torch.export, and a PlayItBack X2 training step for every pairing. A third
encoder registered by this test alone (a toy) goes through the same checks and trains from a config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from engine_utils import TINY_MODEL
from playitback import registry
from playitback.config import derived, load_config
from playitback.data.labels import LabelSpace
from playitback.engine.build import build_loss
from playitback.engine.optim import layer_decay_scales
from playitback.losses import SALIENCY_OBJECTIVES
from playitback.models import PlayItBack, build_model
from playitback.models.build import build_encoder, saliency_class
from playitback.models.encoder import Encoder, Grid, InputNorm, TokenRows
from playitback.models.output import ModelOutput
from playitback.models.saliency_interface import Saliency

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "configs/Demo/PlayItBackX2.yaml"


class ToyEncoder(Encoder):
    """A per-frame MLP over the mel bins, pooled over pairs of frames: a token grid of (T / 2, 1). What a user's
    new encoder looks like: one class, ``from_config`` and the contract's methods."""

    def __init__(self, num_classes: list[int], bins: int, width: int, mean: float, std: float) -> None:
        super().__init__()
        self.input_norm = InputNorm(mean, std)
        self.embed = nn.Linear(bins, width)
        self.norm = nn.LayerNorm(width)
        # Row t pools frames 2t and 2t + 1: centred on frame 2t + 0.5.
        self.token_rows = TokenRows(1.0, 0.0).after_conv(2, 2, 0)
        self.num_features = width
        self.num_classes = num_classes
        self.head = nn.Linear(width, sum(num_classes))

    @classmethod
    def from_config(cls, cfg) -> ToyEncoder:
        return cls(derived.class_counts(cfg), cfg.AUDIO_DATA.NUM_FREQUENCIES, cfg.ENCODER.EMBED_DIM,
                   cfg.AUDIO_DATA.NORM_MEAN, cfg.AUDIO_DATA.NORM_STD)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Grid]:
        self.check_input(x)
        frames = torch.nn.functional.gelu(self.embed(self.input_norm(x)[:, 0]))  # [B, T, D]
        rows = frames.unflatten(1, (-1, 2)).mean(2)
        return self.norm(rows), (rows.shape[1], 1)

    @property
    def num_layers(self) -> int:
        return 1

    def layer_id(self, name: str) -> int:
        return {"embed": 0, "norm": 1}.get(name.split(".")[0], 2)


@pytest.fixture(autouse=True)
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ENCODERS, "toy", f"{__name__}:ToyEncoder")


ENCODER_OPTS = {
    "mvit": [],
    "ast": ["ENCODER.NAME", "ast", "ENCODER.VARIANT", "custom", "ENCODER.EMBED_DIM", "16", "ENCODER.NUM_HEADS", "2",
            "ENCODER.PATCH_KERNEL", "[4, 16]", "ENCODER.PATCH_STRIDE", "[2, 16]", "ENCODER.PATCH_PADDING", "[0, 0]",
            "ENCODER.HEAD_POOL", "mean", "ENCODER.STEM_CHANNELS", "[]"],
    "toy": ["ENCODER.NAME", "toy", "ENCODER.VARIANT", "custom", "ENCODER.EMBED_DIM", "16", "ENCODER.HEAD_POOL", "mean",
            "ENCODER.STEM_CHANNELS", "[]"],
}
ENCODERS = [*registry.ENCODERS, "toy"]


def config(encoder: str, *opts: str):
    return load_config(CFG, ["NUM_GPUS", "0", *TINY_MODEL, "DECODER.INPUT_CHANNELS", "0", *ENCODER_OPTS[encoder],
                             *opts])


def test_every_registered_encoder_and_saliency_is_covered() -> None:
    assert set(ENCODER_OPTS) == set(registry.ENCODERS) | {"toy"}
    for name in registry.SALIENCIES:
        cls = registry.resolve(registry.SALIENCIES, name, "SALIENCY.METHOD")
        assert issubclass(cls, Saliency) and cls.objective in SALIENCY_OBJECTIVES
        assert set(cls.objective_fields) <= {f for f in ModelOutput.__dataclass_fields__}
    for name in registry.ENCODERS:
        assert issubclass(registry.resolve(registry.ENCODERS, name, "ENCODER.NAME"), Encoder)
    with pytest.raises(ValueError, match="ENCODER.NAME 'beats' is not registered; choose one of mvit, ast, toy"):
        registry.resolve(registry.ENCODERS, "beats", "ENCODER.NAME")


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_contract(name: str) -> None:
    cfg = config(name)
    torch.manual_seed(0)
    encoder = build_encoder(cfg).eval()
    frames, bins = cfg.AUDIO_DATA.FRAMES0, cfg.AUDIO_DATA.NUM_FREQUENCIES
    x = torch.randn(3, 1, frames, bins)
    tokens, (grid_t, grid_f) = encoder.forward_features(x)
    assert tokens.shape == (3, grid_t * grid_f, encoder.num_features)
    logits, features = encoder.classify(x)
    assert logits.shape == (3, 4) and features.shape == (3, encoder.num_features)
    assert encoder.forward_head(tokens).shape == (3, 4)
    # The token rows cover the input: row centres inside it, rows as many as the stride allows.
    centres = encoder.token_rows.centres(grid_t)
    assert 0 <= centres[0] and centres[-1] < frames and grid_t == pytest.approx(frames / encoder.token_rows.stride,
                                                                                abs=2)
    # The standardisation is the encoder's own: statistics of the config cancel a shifted, scaled input.
    with torch.no_grad():
        shifted = build_encoder(config(name, "AUDIO_DATA.NORM_MEAN", "3.0", "AUDIO_DATA.NORM_STD", "2.0")).eval()
        shifted.load_state_dict(encoder.state_dict())
        torch.testing.assert_close(shifted(x * 2.0 + 3.0), encoder(x), atol=1e-5, rtol=1e-5)
    # Gradients reach every parameter from the encoder-alone logits and from a token set's head.
    encoder.train()
    (encoder.classify(x)[0].sum() + encoder.forward_head(encoder.forward_features(x)[0]).sum()).backward()
    assert [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    # Layer ids: the embeddings at 0, the head at num_layers + 1, every layer in between.
    layers = {encoder.layer_id(n) for n, _ in encoder.named_parameters()}
    assert min(layers) == 0 and max(layers) == encoder.num_layers + 1 and layers == set(range(encoder.num_layers + 2))
    scales = layer_decay_scales(encoder, 0.5)
    assert max(scales.values()) == 1.0 and min(scales.values()) == 0.5 ** (encoder.num_layers + 1)


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_exports(name: str) -> None:
    encoder = build_encoder(config(name)).eval()
    x = torch.randn(2, 1, 16, 128)
    program = torch.export.export(encoder, (x,))
    torch.testing.assert_close(program.module()(x), encoder(x))


@pytest.mark.parametrize("method", list(registry.SALIENCIES))
@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("freeze", [True, False])
def test_playitback_trains_on_every_encoder_and_saliency(name: str, method: str, freeze: bool) -> None:
    """A PlayItBack X2 step: the declared objective fields are set, the loss reads them, and every trainable
    parameter gets a gradient (DDP runs without find_unused_parameters)."""
    cfg = config(name, "SALIENCY.METHOD", method, "SALIENCY.BUDGET", "0.25", "MODEL.FREEZE_ENCODER", str(freeze))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert isinstance(model, PlayItBack) and isinstance(model.encoder, Encoder)
    outputs = model([torch.randn(3, 16 * (i + 1), 128) for i in range(3)])
    cls = saliency_class(cfg)
    for field in cls.objective_fields:
        assert getattr(outputs, field).shape[:2] == (3, 3)  # [S, B, ...]
    assert outputs.replay_masks.sum(-1).tolist() == [[4, 4]] * 3
    targets = torch.nn.functional.one_hot(torch.tensor([0, 1, 3]), 4).float()
    losses = build_loss(cfg, LabelSpace((4,)))(outputs, targets)
    losses["loss"].backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and [n for n in trainable if dict(model.named_parameters())[n].grad is None] == []
    assert all(not n.startswith("encoder.") for n in trainable) if freeze else any(
        n.startswith("encoder.") for n in trainable)


def test_a_loss_for_another_saliency_names_the_missing_fields() -> None:
    cfg = config("mvit", "SALIENCY.METHOD", "evidence")
    outputs = build_model(cfg).eval()([torch.randn(2, 16 * (i + 1), 128) for i in range(3)])
    slots_loss = build_loss(config("mvit", "SALIENCY.METHOD", "slots"), LabelSpace((4,)))
    with pytest.raises(ValueError, match="reads the model outputs pos_logits, neg_logits, but the model left "
                                         "pos_logits, neg_logits unset"):
        slots_loss(outputs, torch.eye(4)[:2])

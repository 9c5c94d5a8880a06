"""Parameter groups, optimiser choice, the LR schedule against hand-computed values, and gradient clipping."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from playitback.engine.optim import build_optimizer, clip_gradients, lr_at, param_groups, set_lr


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.latents = nn.Parameter(torch.zeros(1, 2, 3))
        self.pos_embed = nn.Parameter(torch.zeros(5, 3))
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def _names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_param_groups_split_and_skip_frozen() -> None:
    outer = nn.Sequential(_Tiny())
    groups = param_groups(outer, weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert _names(outer, groups[0]) == {"0.proj.weight", "0.latents"}
    # pos_embed comes from the submodule's no_weight_decay(), prefixed with its path.
    assert _names(outer, groups[1]) == {"0.proj.bias", "0.norm.weight", "0.norm.bias", "0.pos_embed"}


def test_param_groups_without_zero_wd_1d_and_with_skip_names() -> None:
    model = _Tiny()
    groups = param_groups(model, weight_decay=0.1, zero_wd_1d=False, skip_names={"latents"})
    assert _names(model, groups[0]) == {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
    assert _names(model, groups[1]) == {"latents", "pos_embed"}


def test_param_groups_drop_empty_groups_and_reject_fully_frozen() -> None:
    groups = param_groups(nn.LayerNorm(4), weight_decay=0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        param_groups(nn.Linear(2, 2).requires_grad_(False), weight_decay=0.1)


def test_build_optimizer_types_and_flags() -> None:
    groups = param_groups(_Tiny(), weight_decay=0.05)
    sgd = build_optimizer(groups, "SGD", lr=0.1)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["nesterov"] is True and sgd.defaults["momentum"] == 0.9 and sgd.defaults["dampening"] == 0
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.05, 0.0]
    adamw = build_optimizer(param_groups(_Tiny(), 0.05), "adamw", lr=1e-3, betas=(0.8, 0.99))
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["betas"] == (0.8, 0.99)
    assert type(build_optimizer(param_groups(_Tiny(), 0.0), "adam", lr=1e-3)) is torch.optim.Adam
    with pytest.raises(ValueError, match="choose one of sgd, adam, adamw"):
        build_optimizer(groups, "lamb", lr=0.1)
    with pytest.raises(ValueError, match="Nesterov SGD needs momentum > 0"):
        build_optimizer(groups, "sgd", lr=0.1, momentum=0.0)


COSINE = dict(policy="cosine", base_lr=0.1, max_epoch=30.0, warmup_epochs=2.5, warmup_start_lr=0.001,
              cosine_end_lr=1e-4)


def test_cosine_with_warmup_hand_computed() -> None:
    assert lr_at(0.0, **COSINE) == pytest.approx(0.001)
    # Halfway through the warmup: the mean of the start and the peak.
    assert lr_at(1.25, **COSINE) == pytest.approx((0.001 + 0.1) / 2)
    assert lr_at(2.5, **COSINE) == pytest.approx(0.1)
    # Middle of the cosine (2.5 + 27.5 / 2): the mean of the peak and the end.
    assert lr_at(16.25, **COSINE) == pytest.approx((0.1 + 1e-4) / 2)
    assert lr_at(30.0, **COSINE) == pytest.approx(1e-4)
    assert lr_at(35.0, **COSINE) == pytest.approx(1e-4)
    after_warmup = [lr_at(2.5 + 27.5 * i / 200, **COSINE) for i in range(201)]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:]))


def test_cosine_from_epoch_zero_warms_up_to_the_cosine_value() -> None:
    schedule = dict(COSINE, cosine_after_warmup=False, cosine_end_lr=0.0)
    peak_at_warmup_end = 0.1 * 0.5 * (1 + math.cos(math.pi * 2.5 / 30))
    assert lr_at(2.5, **schedule) == pytest.approx(peak_at_warmup_end)
    assert lr_at(1.25, **schedule) == pytest.approx((0.001 + peak_at_warmup_end) / 2)
    assert lr_at(15.0, **schedule) == pytest.approx(0.05)


def test_steps_with_relative_lrs() -> None:
    schedule = dict(policy="steps_with_relative_lrs", base_lr=0.2, max_epoch=30, steps=[0, 10, 20], lrs=[1, 0.1, 0.01])
    assert [lr_at(e, **schedule) for e in (0, 9.99, 10, 19.5, 20, 29.9)] == pytest.approx(
        [0.2, 0.2, 0.02, 0.02, 0.002, 0.002])
    assert lr_at(0.5, **schedule, warmup_epochs=1.0, warmup_start_lr=0.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="steps must be ascending, start at 0"):
        lr_at(1.0, **dict(schedule, steps=[5, 10, 20]))
    with pytest.raises(ValueError, match="choose one of cosine, steps_with_relative_lrs"):
        lr_at(1.0, policy="linear", base_lr=0.1, max_epoch=10)


def test_set_lr_honours_lr_scale() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt = build_optimizer([{"params": [a]}, {"params": [b], "lr_scale": 0.5}], "sgd", lr=1.0)
    set_lr(opt, 0.4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.4, 0.2])


def test_clip_gradients_by_norm_and_value() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm = clip_gradients([a, b], clip_value=None, clip_l2norm=1.0)
    assert norm.item() == pytest.approx(5.0)
    assert a.grad.tolist() == pytest.approx([0.6, 0.0], rel=1e-5) and b.grad.tolist() == pytest.approx([0.8], rel=1e-5)
    a.grad = torch.tensor([3.0, -0.5])
    assert clip_gradients(iter([a]), clip_value=1.0, clip_l2norm=None) is None
    assert a.grad.tolist() == [1.0, -0.5]
    assert clip_gradients([a], None, None) is None and a.grad.tolist() == [1.0, -0.5]
    with pytest.raises(ValueError, match="at most one of clip_value and clip_l2norm"):
        clip_gradients([a], 1.0, 1.0)


# ---- issue 12, item 11: warmup longer than the run, layer-wise LR decay -----------------------------------------


def test_warmup_longer_than_the_run_follows_the_warmup_line() -> None:
    """PySlowFast's rule: a run that ends inside its warmup (a 1-epoch smoke run of a 2.5-epoch warmup) follows the
    same line as the full run, so its epoch is the first epoch of the full run."""
    smoke = dict(COSINE, max_epoch=1.0)
    for epoch in (0.0, 0.4, 0.999):
        assert lr_at(epoch, **smoke) == pytest.approx(0.001 + (0.1 - 0.001) * epoch / 2.5)
        assert lr_at(epoch, **smoke) == pytest.approx(lr_at(epoch, **COSINE))
    # A warmup exactly as long as the run rises to BASE_LR at its end.
    assert lr_at(0.5, **dict(COSINE, max_epoch=2.5)) == pytest.approx(0.001 + 0.099 * 0.5 / 2.5)


def _tiny_playitback(*opts: str):
    from engine_utils import REPO, TINY_MODEL
    from playitback.config import load_config
    from playitback.models import build_model

    cfg = load_config(REPO / "configs/Demo/PlayItBackX2.yaml",
                      ["NUM_GPUS", "0", *TINY_MODEL, "MODEL.FREEZE_ENCODER", "False", *opts])
    return cfg, build_model(cfg)


def test_layer_decay_gives_each_encoder_layer_its_hand_computed_factor() -> None:
    """MAE/MViTv2 fine-tuning: with decay d and D blocks, the patch embedding gets d^(D+1), block i d^(D-i), the final
    norm and head 1; everything after the encoder (saliency, decoder) 1. Weight decay still skips 1-D parameters."""
    from playitback.engine.build import build_training_optimizer

    # The slot saliency trains the encoder's head too (the evidence saliency freezes it: see below).
    cfg, model = _tiny_playitback("SOLVER.LAYER_DECAY", "0.5", "SALIENCY.METHOD", "slots")
    optimizer = build_training_optimizer(cfg, model)
    set_lr(optimizer, 1.0)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    wd_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    expected = {"encoder.patch_embed.": 0.125, "encoder.blocks.0.": 0.25, "encoder.blocks.1.": 0.5,
                "encoder.norm.": 1.0, "encoder.head.": 1.0, "decoder.": 1.0, "saliencies.": 1.0}
    seen = set()
    for name, param in model.named_parameters():
        prefix = next(p for p in expected if name.startswith(p))
        seen.add(prefix)
        assert lr_of[id(param)] == pytest.approx(expected[prefix]), name
        assert wd_of[id(param)] == (0.0 if param.ndim <= 1 or name.endswith(".bias") else cfg.SOLVER.WEIGHT_DECAY)
    assert seen == set(expected)
    # With the evidence saliency the encoder's head is frozen: it is in no group, every trainable parameter is.
    cfg, model = _tiny_playitback("SOLVER.LAYER_DECAY", "0.5", "SALIENCY.METHOD", "evidence")
    grouped = {id(p) for group in build_training_optimizer(cfg, model).param_groups for p in group["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in grouped for p in model.encoder.head.parameters())
    # No decay (the default): one LR for every parameter, as before.
    cfg, model = _tiny_playitback()
    assert {group.get("lr_scale", 1.0) for group in build_training_optimizer(cfg, model).param_groups} == {1.0}

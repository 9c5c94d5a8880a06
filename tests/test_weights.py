"""Checkpoint key mapping: prefixes, DDP, RGB patch kernels, mismatches, purity, and a real load round trip."""
from __future__ import annotations

import torch
from torch import nn

from playitback.models.mvit import MViT
from playitback.models.weights import LoadReport, remap_state_dict


def tiny_mvit(num_classes: int = 5, in_chans: int = 1, seed: int = 0) -> MViT:
    torch.manual_seed(seed)
    return MViT(
        num_classes=[num_classes], in_chans=in_chans, embed_dim=8, depth=2, drop_path_rate=0.0, dropout_rate=0.0,
        dim_mul=[[1, 2.0]], head_mul=[[1, 2.0]], pool_q_stride=[[0, 1, 1], [1, 2, 2]], pool_kv_stride_adaptive=[2, 2],
    )


class Wrapper(nn.Module):
    """The PlayItBack layout: an ``encoder`` MViT next to a ``decoder``."""

    def __init__(self, encoder: MViT) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = nn.Linear(4, 3)


def test_bare_mvit_keys_go_under_encoder_and_load() -> None:
    source_model = tiny_mvit(seed=1).eval()
    target_model = Wrapper(tiny_mvit(seed=2)).eval()
    mapped, report = remap_state_dict(source_model.state_dict(), target_model.state_dict())

    encoder_keys = ["encoder." + k for k in source_model.state_dict()]
    assert sorted(mapped) == sorted(encoder_keys)
    assert report.remapped
    assert sorted(report.adapted) == sorted(encoder_keys)
    assert sorted(report.missing) == ["decoder.bias", "decoder.weight"]
    assert not report.unexpected and not report.shape_mismatch

    target_model.load_state_dict(mapped, strict=False)
    x = torch.randn(2, 1, 24, 16)
    torch.testing.assert_close(target_model.encoder(x), source_model(x), rtol=0, atol=0)


def test_ddp_prefix_and_clear_patterns_are_stripped() -> None:
    target = tiny_mvit().state_dict()
    source = {"module." + k: v for k, v in target.items()}
    mapped, report = remap_state_dict(source, target)
    assert sorted(mapped) == sorted(target) and report.loaded == list(target)
    assert not report.remapped and not report.adapted and not report.missing

    source = {"backbone." + k: v for k, v in target.items()}
    mapped, report = remap_state_dict(source, target, clear_name_patterns=["backbone."])
    assert sorted(mapped) == sorted(target) and not report.unexpected


def test_rgb_patch_kernel_is_averaged() -> None:
    rgb = tiny_mvit(in_chans=3, seed=3).state_dict()
    kernel = rgb["patch_embed.proj.weight"]
    kernel_before = kernel.clone()
    target = tiny_mvit().state_dict()
    mapped, report = remap_state_dict(rgb, target)

    expected = (kernel[:, 0] + kernel[:, 1] + kernel[:, 2]).unsqueeze(1) / 3
    assert mapped["patch_embed.proj.weight"].shape == (8, 1, 7, 7)
    torch.testing.assert_close(mapped["patch_embed.proj.weight"], expected)
    assert report.adapted == ["patch_embed.proj.weight"] and not report.remapped
    assert torch.equal(kernel, kernel_before)  # the source is left untouched

    _, report = remap_state_dict({"patch_embed.proj.weight": kernel}, {"encoder." + k: v for k, v in target.items()})
    assert report.adapted == ["encoder.patch_embed.proj.weight"] and report.remapped


def test_other_class_count_and_foreign_keys_are_reported_not_raised() -> None:
    source = dict(tiny_mvit(num_classes=1000).state_dict())
    source["blocks.0.attn.rel_pos_h"] = torch.zeros(13, 8)
    source["blocks.0.attn.rel_pos_w"] = torch.zeros(13, 8)
    source["cls_token"] = torch.zeros(1, 1, 8)
    source["pos_embed"] = torch.zeros(1, 50, 8)
    source_keys = list(source)
    target = tiny_mvit().state_dict()
    mapped, report = remap_state_dict(source, target)

    assert report.shape_mismatch == ["head.projection.weight", "head.projection.bias"]
    assert report.missing == report.shape_mismatch
    assert sorted(report.unexpected) == sorted(
        ["blocks.0.attn.rel_pos_h", "blocks.0.attn.rel_pos_w", "cls_token", "pos_embed"]
    )
    assert "head.projection.weight" not in mapped and len(mapped) == len(target) - 2
    assert list(source) == source_keys  # no key added or removed

    text = report.summary()
    assert f"loaded {len(target) - 2}/{len(target)}" in text
    assert "head.projection.weight" in text and "rel_pos_h" in text


def test_summary_elides_long_lists() -> None:
    report = LoadReport(missing=[f"k{i}" for i in range(30)])
    text = report.summary(max_names=3)
    assert "k0, k1, k2, ... (27 more)" in text and "k3" not in text


def test_an_imagenet_mvitv2_checkpoint_file_starts_a_stage1_encoder(tmp_path) -> None:
    """The README's first choice for a small dataset: a published ImageNet MViTv2 file (PySlowFast/mvit layout:
    ``model_state`` with an RGB patch kernel, a 1000-class head, relative-position tables) loaded through
    TRAIN.CHECKPOINT_FILE_PATH into the stage-1 encoder of a config."""
    from engine_utils import TINY_MODEL
    from playitback.config import load_config
    from playitback.engine.checkpoint_files import load_weights
    from playitback.models import build_model

    cfg = load_config("configs/Demo/MViT_pretrain.yaml", [*TINY_MODEL, "ENCODER.POOL_Q_STRIDE", "[[1, 2, 2]]"])
    model = build_model(cfg).eval()
    enc = cfg.ENCODER
    torch.manual_seed(7)
    imagenet = MViT(num_classes=[1000], in_chans=3, embed_dim=enc.EMBED_DIM, depth=enc.DEPTH, num_heads=enc.NUM_HEADS,
                    dim_mul=enc.DIM_MUL, head_mul=enc.HEAD_MUL, pool_q_stride=enc.POOL_Q_STRIDE,
                    pool_kv_stride_adaptive=enc.POOL_KV_STRIDE_ADAPTIVE, drop_path_rate=0.0).eval()
    state = dict(imagenet.state_dict())
    state["blocks.0.attn.rel_pos_h"] = torch.zeros(13, 8)
    state["blocks.0.attn.rel_pos_w"] = torch.zeros(13, 8)
    path = tmp_path / "MViTv2_in1k.pyth"
    torch.save({"model_state": state, "epoch": 299}, path)
    head_before = model.encoder.head.projection.weight.clone()

    checkpoint, report = load_weights(model, path)

    # Its head does not fit and its keys were remapped: weights only (no optimiser state, epoch 0).
    assert checkpoint["epoch"] == 299 and report.missing and report.remapped
    torch.testing.assert_close(model.encoder.patch_embed.proj.weight,
                               state["patch_embed.proj.weight"].mean(dim=1, keepdim=True))
    assert torch.equal(model.encoder.head.projection.weight, head_before)
    for key, value in model.encoder.state_dict().items():
        if not key.startswith(("patch_embed.proj.weight", "head.")):
            assert torch.equal(value, state[key]), key
    # The averaged kernel sees a spectrogram as the RGB network sees a grey image of a third of its values.
    spectrogram = torch.randn(2, 1, cfg.AUDIO_DATA.FRAMES0, 128)
    tokens, _ = model.encoder.forward_features(spectrogram)
    reference, _ = imagenet.forward_features(spectrogram.expand(-1, 3, -1, -1) / 3)
    torch.testing.assert_close(tokens, reference, rtol=1e-4, atol=1e-5)

"""Every shipped config loads, validates and runs (forward, loss, backward) at a tiny size; config errors are clear."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from playitback.config import ConfigError, derived, load_config
from playitback.config.defaults import ENCODER_VARIANTS, get_cfg
from playitback.data.build import build_label_space
from playitback.engine.build import build_loss
from playitback.losses import labels_to_targets
from playitback.models import EncoderClassifier, PlayItBack, build_model
from playitback.models.build import build_encoder

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "_base_" not in p.parts and p.stem != "_base_")

# Shrinks the encoder and decoder while keeping each config's structure (playbacks, heads, loss, fusion).
# 64 frames leave the tiny encoder a grid of 4 token rows; with a single row (16 frames) the per-sample normalised
# saliency profile is constant and the saliency would get exactly zero gradient.
TINY = [
    "NUM_GPUS", "0", "TRAIN.BATCH_SIZE", "2", "TEST.BATCH_SIZE", "2", "AUDIO_DATA.FRAMES0", "64",
    "ENCODER.EMBED_DIM", "8", "ENCODER.DEPTH", "3", "ENCODER.DIM_MUL", "[[1, 2.0], [2, 2.0]]",
    "ENCODER.HEAD_MUL", "[[1, 2.0], [2, 2.0]]", "ENCODER.POOL_Q_STRIDE", "[[1, 2, 2], [2, 2, 2]]",
    "DECODER.INPUT_CHANNELS", "32", "DECODER.NUM_LATENTS", "4", "DECODER.LATENT_DIM", "16",
    "DECODER.LATENT_HEADS", "2", "DECODER.LATENT_DIM_HEAD", "8", "DECODER.CROSS_DIM_HEAD", "8",
    "DECODER.SELF_PER_CROSS_ATTN", "1",
]
# The AST configs: the same tiny width with heads that divide it, the decoder taking the encoder's width.
TINY_BY_ENCODER = {"mvit": [], "ast": ["ENCODER.NUM_HEADS", "2", "DECODER.INPUT_CHANNELS", "0"]}


def tiny_opts(path: Path) -> list[str]:
    """TINY, with the keys the config's encoder needs at that size."""
    return TINY + TINY_BY_ENCODER[load_config(path).ENCODER.NAME]


def test_shipped_configs_exist() -> None:
    names = {str(p.relative_to(REPO / "configs")) for p in SHIPPED}
    for dataset in ("AudioSet", "VGG-Sound", "EPIC-KITCHENS"):
        for x in (1, 2, 3):
            assert f"{dataset}/PlayItBackX{x}.yaml" in names
        assert f"{dataset}/MViTv2_B.yaml" in names
    assert "VGG-Sound/PlayItBackX1_S.yaml" in names
    assert {f"AudioSet/as20k/{n}.yaml" for n in ("MViTv2_B", "PlayItBackX1", "PlayItBackX2", "PlayItBackX3")} <= names


def _flat(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_audioset_recipes_balanced_as2m_and_as20k() -> None:
    for name in ("MViTv2_B", "PlayItBackX1", "PlayItBackX2", "PlayItBackX3"):
        as2m = load_config(REPO / f"configs/AudioSet/{name}.yaml")
        as20k = load_config(REPO / f"configs/AudioSet/as20k/{name}.yaml")
        assert (as2m.AUDIOSET.TRAIN_LIST, as2m.DATA.TRAIN_SAMPLER, as2m.DATA.SAMPLES_PER_EPOCH) == \
            ("as2m_train.csv", "balanced", 200000)
        assert (as20k.AUDIOSET.TRAIN_LIST, as20k.DATA.TRAIN_SAMPLER, as20k.DATA.SAMPLES_PER_EPOCH) == \
            ("as20k_train.csv", "uniform", 0)
        differ = {k for k, v in _flat(as2m).items() if _flat(as20k)[k] != v}
        assert differ == {"AUDIOSET.TRAIN_LIST", "DATA.TRAIN_SAMPLER", "DATA.SAMPLES_PER_EPOCH"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_shipped_config_runs_at_tiny_size(path: Path) -> None:
    full = load_config(path)
    assert full.DECODER.DEPTH == full.MODEL.PLAYBACK + 1 or derived.is_encoder_only(full)
    cfg = load_config(path, tiny_opts(path))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, EncoderClassifier if derived.is_encoder_only(cfg) else PlayItBack)
    counts = derived.class_counts(cfg)
    batch = 2
    playbacks = [torch.randn(batch, cfg.AUDIO_DATA.FRAMES0 * (i + 1), 128) for i in range(derived.num_playbacks(cfg))]
    if cfg.MODEL.MULTITASK:
        labels = torch.stack([torch.randint(0, c, (batch,)) for c in counts], dim=1)
    elif cfg.DATA.MULTI_LABEL:
        labels = (torch.rand(batch, counts[0]) < 0.05).float()
        labels[:, 0] = 1.0
    else:
        labels = torch.randint(0, counts[0], (batch,))
    model.train()
    outputs = model(playbacks)
    assert outputs.logits.shape == (batch, sum(counts))
    losses = build_loss(cfg, build_label_space(cfg))(outputs, labels_to_targets(labels, counts, cfg.DATA.MULTI_LABEL))
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    # An all-zero gradient is as dead as a missing one (a detached path, a mask that blocks everything).
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, dead


def test_small_recipe_reads_full_band_frame_tokens() -> None:
    """configs/Small (docs/method.md section 8): one token per frame over the whole spectrum, per-clip standardised
    input, max pooling, validation on its own list; at full size the 64 frames give 64 token rows one frame apart."""
    cfg = load_config(REPO / "configs/Small/MViT_scratch.yaml", ["NUM_GPUS", "0"])
    assert derived.is_encoder_only(cfg) and cfg.TRAIN.DATASET == cfg.TEST.DATASET == "custom"
    assert cfg.CUSTOM.VAL_LIST != cfg.CUSTOM.TEST_LIST
    assert (cfg.AUDIO_DATA.NORM_PER_CLIP, cfg.ENCODER.HEAD_POOL) == ("mean_std", "max")
    assert list(cfg.ENCODER.PATCH_KERNEL) == [3, cfg.AUDIO_DATA.NUM_FREQUENCIES]
    encoder = build_model(cfg).encoder.eval()
    with torch.no_grad():
        tokens, grid = encoder.forward_features(torch.randn(2, 1, cfg.AUDIO_DATA.FRAMES0, 128))
    assert grid == (cfg.AUDIO_DATA.FRAMES0, 1) and tokens.shape[1] == cfg.AUDIO_DATA.FRAMES0
    assert (encoder.token_rows.stride, encoder.token_rows.offset) == (1.0, 0.0)


def test_original_values_survive() -> None:
    cfg = load_config(REPO / "configs/VGG-Sound/PlayItBackX2.yaml")
    assert (cfg.MODEL.NUM_CLASSES, cfg.AUDIO_DATA.CLIP_SECS, cfg.SOLVER.BASE_LR) == (309, 5.0, 5e-4)
    assert cfg.ENCODER.DEPTH == 24 and cfg.ENCODER.DROPPATH_RATE == 0.3 and cfg.MIXUP.ENABLE
    assert derived.clip_samples(cfg) == 80000 and build_encoder(cfg).num_features == 768
    epic = load_config(REPO / "configs/EPIC-KITCHENS/PlayItBackX3.yaml")
    assert derived.class_counts(epic) == [97, 300] and derived.clip_samples(epic) == 31984
    audioset = load_config(REPO / "configs/AudioSet/PlayItBackX1.yaml")
    assert audioset.DATA.MULTI_LABEL and audioset.MODEL.LOSS_FUNC == "bce_logit"


def test_command_line_overrides_and_types() -> None:
    cfg = load_config(REPO / "configs/VGG-Sound/PlayItBackX2.yaml",
                      ["NUM_GPUS", "0", "SOLVER.BASE_LR", "1", "OUTPUT_DIR", "runs/x", "TRAIN.BATCH_SIZE", "8"],
                      shard_id=0, num_shards=1)
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.OUTPUT_DIR == "runs/x" and cfg.NUM_GPUS == 0
    assert cfg.is_frozen()


@pytest.mark.parametrize(
    "opts, message",
    [
        (["TRAIN.BATCH_SZE", "3"], "did you mean TRAIN.BATCH_SIZE"),
        (["TRAN.ENABLE", "False"], "did you mean TRAIN.ENABLE"),
        (["SOLVER.MAX_EPOCHS", "3"], "did you mean SOLVER.MAX_EPOCH"),
        (["MODEL.NUM_CLASSES", "many"], "MODEL.NUM_CLASSES expects a int"),
        (["MODEL.PLAYBACK", "3", "DECODER.DEPTH", "2"], "DECODER.DEPTH (2) must equal MODEL.PLAYBACK + 1 (4)"),
        (["NUM_GPUS", "3", "TRAIN.BATCH_SIZE", "64"], "TRAIN.BATCH_SIZE (64) must be a positive multiple"),
        (["DECODER.FUSION", "sum"], "DECODER.FUSION is 'sum'; choose one of"),
        (["DATA.MULTI_LABEL", "True"], "DATA.MULTI_LABEL needs MODEL.LOSS_FUNC bce_logit"),
        (["NUM_GPUS"], "KEY VALUE pairs"),
        (["ENCODER.NAME", "ast"], "ENCODER.VARIANT mvitv2_s is a size of the mvit encoder, but ENCODER.NAME is ast; "
                                  "choose a variant of ast (ast_base)"),
        (["ENCODER.VARIANT", "ast_base", "ENCODER.HEAD_POOL", "max"], "ENCODER.HEAD_POOL and ENCODER.STEM_CHANNELS "
                                                                       "are keys of the mvit encoder"),
        (["ENCODER.NAME", "beats"], "ENCODER.NAME is 'beats'; choose one of 'mvit', 'ast'"),
        (["AUDIO_DATA.NORM_STD", "0.0"], "AUDIO_DATA.NORM_STD (0.0) must be positive; tools/input_stats.py"),
        (["ENCODER.PATCH_KERNEL", "[3, 128]", "AUDIO_DATA.NUM_FREQUENCIES", "64"],
         "ENCODER.PATCH_KERNEL [3, 128] spans more mel bins than the input has (AUDIO_DATA.NUM_FREQUENCIES 64 + 2"),
        (["AUDIO_DATA.NORM_PER_CLIP", "band"], "AUDIO_DATA.NORM_PER_CLIP is 'band'; choose one of"),
        (["ENCODER.HEAD_POOL", "median"], "ENCODER.HEAD_POOL is 'median'; choose one of"),
        (["TRAIN.NOT_LEARNING_MARGIN", "1.5"], "TRAIN.NOT_LEARNING_MARGIN (1.5) must be in [0, 1)"),
        (["MODEL.REPLAY_RESOLUTION", "finer"], "MODEL.REPLAY_RESOLUTION is 'finer'; choose one of"),
        (["SALIENCY.MIL_POOLING", "max"], "SALIENCY.MIL_POOLING is 'max'; choose one of"),
    ],
)
def test_bad_configs_are_named(opts: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, opts)
    assert message in str(err.value)


def test_several_problems_reported_together() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["TRAIN.DATASE", "x", "MODEL.PLAYBACK", "-1"])
    assert "2 config problem(s)" in str(err.value)


def test_base_inheritance_relative_paths_and_removed_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "a.yaml").write_text("MODEL:\n  NUM_CLASSES: 10\nSOLVER:\n  BASE_LR: 0.5\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: base/a.yaml\nSOLVER:\n  BASE_LR: 0.25\nDATA:\n  INPUT_CHANNEL_NUM: [1]\n")
    cfg = load_config(child)
    assert cfg.MODEL.NUM_CLASSES == 10 and cfg.SOLVER.BASE_LR == 0.25
    assert "DATA.INPUT_CHANNEL_NUM" in caplog.text and "ignored" in caplog.text


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    child = tmp_path / "c.yaml"
    child.write_text("_BASE_: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone.yaml does not exist \(named in .*c.yaml under _BASE_\)"):
        load_config(child)
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_derived_values_are_not_written_back() -> None:
    cfg = load_config(REPO / "configs/VGG-Sound/PlayItBackX3.yaml", ["SOLVER.BASE_LR_BATCH_SIZE", "32"],
                      num_shards=2)
    assert derived.base_lr(cfg) == pytest.approx(2 * cfg.SOLVER.BASE_LR)  # the shipped global batch is 64
    assert cfg.SOLVER.BASE_LR == 5e-4
    assert [derived.playback_hop(cfg, i) for i in range(4)] == [200, 100, 67, 50]


def test_config_reference_page_is_up_to_date() -> None:
    from playitback.config.doc import config_reference

    assert (REPO / "docs" / "config.md").read_text() == config_reference(), (
        "docs/config.md is stale: run `python -m playitback.config.doc > docs/config.md`"
    )


def test_config_reference_gives_every_key_a_meaning() -> None:
    rows = dict(re.findall(r"^\| `([A-Z0-9_.]+)` \| `.*` \| (.*) \|$", (REPO / "docs" / "config.md").read_text(), re.M))
    assert set(rows) >= set(_flat(get_cfg()))
    assert not [key for key, meaning in rows.items() if not meaning.strip()]


def test_encoder_variant_sets_its_keys_under_the_ones_a_config_sets() -> None:
    def encoder(opts: list[str], cfg_file: Path | None = None) -> dict:
        return dict(load_config(cfg_file, opts).ENCODER)

    # The defaults are the MViTv2-S of the table, so VARIANT custom on the defaults is MViTv2-S too.
    assert {k: encoder([])[k] for k in ENCODER_VARIANTS["mvitv2_s"]} == {
        k: encoder(["ENCODER.VARIANT", "custom"])[k] for k in ENCODER_VARIANTS["mvitv2_s"]}
    b = encoder(["ENCODER.VARIANT", "mvitv2_b"])
    assert (b["DEPTH"], b["DROPPATH_RATE"], b["DIM_MUL"][0], len(b["POOL_Q_STRIDE"])) == (24, 0.3, [2, 2.0], 24)
    # A key the config file or command line sets wins over the variant; the command line's variant over the file's.
    assert encoder(["ENCODER.DROPPATH_RATE", "0.2"], REPO / "configs/VGG-Sound/PlayItBackX2.yaml")["DROPPATH_RATE"] == 0.2
    assert encoder(["ENCODER.VARIANT", "mvitv2_s", "DECODER.INPUT_CHANNELS", "768"],
                   REPO / "configs/VGG-Sound/PlayItBackX2.yaml")["DEPTH"] == 16
    with pytest.raises(ConfigError, match="ENCODER.VARIANT is 'mvitv2_l'; choose one of 'mvitv2_t'"):
        load_config(None, ["ENCODER.VARIANT", "mvitv2_l"])

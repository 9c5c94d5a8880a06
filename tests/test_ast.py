"""The Audio Spectrogram Transformer against Hugging Face transformers itself: the same random weights give the same
outputs as ASTModel and ASTForAudioClassification, under today's key names and the hub files' older ones; position
embeddings resize to another clip length; a hub-style checkpoint file (safetensors or pytorch_model.bin) loads as the
stage-1 encoder of a config."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from playitback.models.ast import AST
from playitback.models.weights import from_hf_ast_key, remap_state_dict, resize_position_embeddings

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers "
                                                          "or make setup): it is the reference the AST is checked on")

REPO = Path(__file__).resolve().parents[1]
# A small AST: 100 frames x 32 bins, 16x16 patches at stride 10 -> a 2 x 9 patch grid.
FRAMES, BINS, WIDTH, DEPTH, HEADS, CLASSES = 100, 32, 48, 2, 4, 5


def hf_config(**overrides) -> transformers.ASTConfig:
    settings = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=4 * WIDTH,
                    num_mel_bins=BINS, max_length=FRAMES, num_labels=CLASSES, attn_implementation="eager")
    return transformers.ASTConfig(**{**settings, **overrides})


def ours(frames: int = FRAMES, **kwargs) -> AST:
    return AST(num_classes=[CLASSES], input_size=(frames, BINS), embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
               **kwargs).eval()


def hf_classifier(seed: int = 0) -> transformers.ASTForAudioClassification:
    torch.manual_seed(seed)
    model = transformers.ASTForAudioClassification(hf_config()).eval()
    with torch.no_grad():  # ASTModel zero-initialises these; random values make the check meaningful
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


# The names of the hub's checkpoints (transformers 4), written out by hand from a legacy file's key list.
LEGACY_RENAMES = (
    ("layers.{i}.attention.q_proj.", "encoder.layer.{i}.attention.attention.query."),
    ("layers.{i}.attention.k_proj.", "encoder.layer.{i}.attention.attention.key."),
    ("layers.{i}.attention.v_proj.", "encoder.layer.{i}.attention.attention.value."),
    ("layers.{i}.attention.o_proj.", "encoder.layer.{i}.attention.output.dense."),
    ("layers.{i}.mlp.fc1.", "encoder.layer.{i}.intermediate.dense."),
    ("layers.{i}.mlp.fc2.", "encoder.layer.{i}.output.dense."),
    ("layers.{i}.layernorm_before.", "encoder.layer.{i}.layernorm_before."),
    ("layers.{i}.layernorm_after.", "encoder.layer.{i}.layernorm_after."),
)


def legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        for i in range(DEPTH):
            for new, old in LEGACY_RENAMES:
                key = key.replace(new.format(i=i), old.format(i=i))
        renamed[key] = value
    return renamed


def load_into(model: AST, source: dict[str, torch.Tensor]) -> None:
    mapped, report = remap_state_dict(source, model.state_dict())
    assert report.missing == [] and report.unexpected == [], report.summary()
    model.load_state_dict(mapped)


@pytest.mark.parametrize("names", ["current", "legacy"])
def test_ast_equals_transformers_ast_for_audio_classification(names: str) -> None:
    reference = hf_classifier()
    state = reference.state_dict()
    model = ours()
    load_into(model, legacy_names(state) if names == "legacy" else state)
    x = torch.randn(3, FRAMES, BINS)
    with torch.no_grad():
        want = reference.audio_spectrogram_transformer(x)
        hidden = model.encode(x.unsqueeze(1))
        tokens, grid = model.forward_features(x.unsqueeze(1))
        logits, pooled = model.classify(x.unsqueeze(1))
        want_logits = reference(x).logits
    assert (hidden - want.last_hidden_state).abs().max() <= 1e-5
    assert (pooled - want.pooler_output).abs().max() <= 1e-5
    assert (logits - want_logits).abs().max() <= 1e-5
    # The patch tokens, time-major: token t * F'' + f is ASTModel's patch f * T'' + t.
    grid_t, grid_f = grid
    assert grid == (9, 2) and model.position_grid == (2, 9)
    hf_patches = want.last_hidden_state[:, 2:].reshape(3, grid_f, grid_t, WIDTH).transpose(1, 2).flatten(1, 2)
    assert (tokens - hf_patches).abs().max() <= 1e-5


def test_ast_equals_a_bare_transformers_ast_model() -> None:
    """An ASTModel state dict (no classifier) fills everything but the head."""
    torch.manual_seed(1)
    reference = transformers.ASTModel(hf_config()).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model = ours()
    mapped, report = remap_state_dict(reference.state_dict(), model.state_dict())
    assert sorted(report.missing) == ["head.dense.bias", "head.dense.weight", "head.layernorm.bias",
                                      "head.layernorm.weight"]
    model.load_state_dict(mapped, strict=False)
    x = torch.randn(2, FRAMES, BINS)
    with torch.no_grad():
        assert (model.encode(x.unsqueeze(1)) - reference(x).last_hidden_state).abs().max() <= 1e-5


def test_hub_keys_are_renamed_only_for_ast_checkpoints() -> None:
    assert from_hf_ast_key("audio_spectrogram_transformer.encoder.layer.3.output.dense.weight") == \
        "layers.3.mlp.fc2.weight"
    assert from_hf_ast_key("classifier.dense.bias") == "head.dense.bias"
    # An MViT state dict with a key that an AST rename would match is left as it is.
    source = {"classifier.weight": torch.zeros(2, 2)}
    _, report = remap_state_dict(source, {"classifier.weight": torch.zeros(2, 2)})
    assert report.loaded == ["classifier.weight"]


def test_position_embeddings_resize_along_time() -> None:
    """A linear ramp over the patch columns stays a ramp at another length; the summary tokens are kept."""
    grid_f, source_t, target_t = 2, 9, 5
    ramp = torch.linspace(0, 1, source_t).repeat(grid_f)  # frequency-major: f * T + t
    source = torch.cat([torch.tensor([7.0, 8.0]), ramp]).reshape(1, -1, 1).expand(1, -1, 3)
    resized = resize_position_embeddings(source, (grid_f, target_t))
    assert resized.shape == (1, 2 + grid_f * target_t, 3)
    assert resized[0, :2, 0].tolist() == [7.0, 8.0]
    columns = resized[0, 2:, 0].reshape(grid_f, target_t)
    want = F.interpolate(torch.linspace(0, 1, source_t).reshape(1, 1, -1), size=target_t, mode="linear",
                         align_corners=False).flatten()
    torch.testing.assert_close(columns, want.expand(grid_f, -1))
    assert resize_position_embeddings(source, (4, target_t)) is None  # 18 positions are not 4 frequency rows


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_a_hub_checkpoint_file_is_the_stage_1_encoder_of_a_config(tmp_path: Path, suffix: str) -> None:
    """TRAIN.CHECKPOINT_FILE_PATH on a hub-style file (model.safetensors or pytorch_model.bin) of an AST made for 100
    frames, into PlayItBack X2 on the AST of a config with 60 frames: every encoder weight loads (the position
    embedding resized), the head included."""
    from safetensors.torch import save_file

    from playitback.config import load_config
    from playitback.engine.checkpoint_files import load_weights
    from playitback.models import build_model

    reference = hf_classifier()
    path = tmp_path / f"model{suffix}"
    state = {k: v.contiguous() for k, v in legacy_names(reference.state_dict()).items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    cfg = load_config(REPO / "configs/Small/PlayItBackX2_AST.yaml", [
        "AUDIO_DATA.FRAMES0", "60", "AUDIO_DATA.NUM_FREQUENCIES", str(BINS), "MODEL.NUM_CLASSES", str(CLASSES),
        "ENCODER.EMBED_DIM", str(WIDTH), "ENCODER.DEPTH", str(DEPTH), "ENCODER.NUM_HEADS", str(HEADS),
        "ENCODER.PATCH_KERNEL", "[16, 16]", "ENCODER.PATCH_STRIDE", "[10, 10]", "ENCODER.MLP_RATIO", "4.0",
        "SALIENCY.METHOD", "slots", "DECODER.INPUT_CHANNELS", "0"])
    model = build_model(cfg)
    _, report = load_weights(model, path)
    encoder_keys = [k for k in model.state_dict() if k.startswith("encoder.")]
    assert sorted(report.loaded) == sorted(encoder_keys)
    assert "encoder.embeddings.position_embeddings" in report.adapted
    assert model.encoder.embeddings.position_embeddings.shape == (1, 2 + 2 * 5, WIDTH)


SHARED_AUDIO = REPO.parent / "shared" / "data" / "audio"


def _clips() -> list[tuple[str, np.ndarray]]:
    """Two real VGG-Sound clips where ../shared is present, and always a synthetic one: tones, a chirp, clicks and
    noise at speech-like levels, 10 s at 16 kHz."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(160_000) / 16_000
    synthetic = (0.2 * np.sin(2 * np.pi * 440 * t) * (t % 1 < 0.4) + 0.1 * np.sin(2 * np.pi * (200 + 300 * t) * t)
                 + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    synthetic[::4000] += 0.5
    clips = [("synthetic", synthetic)]
    for name in ("5A-WzSixd1w_000059.wav", "7THYk0J-vog_000030.wav"):
        if (SHARED_AUDIO / name).is_file():
            clips.append((name, sf.read(SHARED_AUDIO / name, dtype="float32")[0]))
    return clips


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kaldi_front_end_equals_ast_feature_extractor(dtype: torch.dtype) -> None:
    """AUDIO_DATA.FEATURE_STYLE kaldi with AST's settings (25 ms window, n_fft 512, 10 ms hop, 128 bands) gives
    ASTFeatureExtractor's fbank (before its padding to 1024 frames and its normalisation) on every frame inside the
    clip: float64 within 1e-5, float32 within 5e-3 in the log domain (the quietest bands; mean error 6e-7)."""
    from playitback.data.spectrogram import PlaybackPyramid

    extractor = transformers.ASTFeatureExtractor(do_normalize=False)
    for name, waveform in _clips():
        frames0 = waveform.size // 160  # a 160-sample hop
        waveform = waveform[: frames0 * 160]
        want = extractor(waveform, sampling_rate=16_000, return_tensors="np")["input_values"][0]
        inside = (waveform.size - 400) // 160 + 1
        pyramid = PlaybackPyramid(16_000, 1, frames0=frames0, window_ms=25, n_fft=512, n_mels=128, style="kaldi")
        ours = pyramid(torch.from_numpy(waveform).to(dtype))[0][:inside].double().numpy()
        error = abs(ours - want[:inside])
        assert error.max() <= (1e-5 if dtype == torch.float64 else 5e-3), (name, error.max())
        assert error.mean() <= 1e-5, (name, error.mean())


def test_kaldi_front_end_at_every_playback_keeps_the_window_centre() -> None:
    """A 'hop'-scaled kaldi pyramid: frame 2t of playback 1 (a 200-sample window at hop 160) is centred where frame t
    of playback 0 (400 samples at hop 320) is, so a click at that centre peaks at both; with a fixed window frame 2t
    of playback 1 is frame t of playback 0."""
    from playitback.data.spectrogram import PlaybackPyramid

    waveform = torch.zeros(16_000, dtype=torch.float64)
    waveform[320 * 24 + 200] = 1.0  # the centre of playback 0's frame 24
    scaled = PlaybackPyramid(16_000, 2, frames0=50, window_ms=25, n_fft=512, n_mels=64, style="kaldi",
                             window_scaling="hop")
    coarse, fine = scaled(waveform)
    assert scaled.win_lengths == [400, 200] and scaled.window_offsets == [0, -100]
    assert coarse.sum(-1).argmax() == 24 and fine.sum(-1).argmax() == 48
    noise = torch.randn(16_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    coarse, fine = PlaybackPyramid(16_000, 2, frames0=50, window_ms=25, n_fft=512, n_mels=64, style="kaldi")(noise)
    torch.testing.assert_close(fine[::2], coarse)

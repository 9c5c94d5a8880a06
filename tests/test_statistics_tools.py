"""tools/input_stats.py and tools/baseline.py: the statistics against independent computations, the baseline's fit
and both tools end to end on a small dataset."""
from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from engine_utils import make_tiny_dataset
from playitback.config import load_config
from playitback.data.build import build_dataset, load_split_records
from playitback.data.statistics import clip_statistics, input_statistics

REPO = Path(__file__).resolve().parents[1]
import baseline  # noqa: E402
import input_stats  # noqa: E402

CFG = "configs/Demo/MViT_pretrain.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    data = make_tiny_dataset(tmp_path_factory.mktemp("tiny"))
    return ["VGGSOUND.AUDIO_DATA_DIR", str(data / "audio"), "VGGSOUND.ANNOTATIONS_DIR", str(data / "annotations"),
            "MODEL.NUM_CLASSES", "4", "AUDIO_DATA.CLIP_SECS", "2.0", "DATA_LOADER.NUM_WORKERS", "0"]


def test_input_statistics_are_those_of_the_encoder_inputs(tiny: list[str]) -> None:
    cfg = load_config(CFG, tiny)
    mean, std, clips = input_statistics(cfg)
    # The validation-mode items of the training clips: the front-end training uses, playback 0, centre crops.
    dataset = build_dataset(cfg, "val", records=load_split_records(cfg, "train"))
    values = torch.cat([dataset[i]["playbacks"][0].flatten() for i in range(len(dataset))]).double()
    assert clips == len(dataset) == 24
    assert mean == pytest.approx(float(values.mean()), abs=1e-6)
    assert std == pytest.approx(float(values.std(unbiased=False)), rel=1e-6)
    _, _, fewer = input_statistics(cfg, max_clips=5)
    assert fewer == 5


def test_clip_statistics_match_librosa(tiny: list[str]) -> None:
    cfg = load_config(CFG, tiny)
    features, records = clip_statistics(cfg, "test")
    assert features.shape == (12, 256) and len(records) == 12
    audio, rate = librosa.load(Path(tiny[1]) / f"{records[0].source}.wav", sr=None)
    window = round(cfg.AUDIO_DATA.WINDOW_LENGTH * rate / 1000)
    magnitude = np.abs(librosa.stft(audio, n_fft=2048, hop_length=window // 2, win_length=window, window="hann",
                                    center=True, pad_mode="constant"))
    mel = librosa.filters.mel(sr=rate, n_fft=2048, n_mels=128, htk=True, norm=None) @ magnitude
    log_mel = np.log(mel + 1e-6)[:, : round(len(audio) / (window // 2))]
    np.testing.assert_allclose(features[0, :128], log_mel.mean(axis=1), atol=2e-3)
    np.testing.assert_allclose(features[0, 128:], log_mel.std(axis=1, ddof=1), atol=2e-3)


def test_baseline_fits_separable_statistics_and_reports_absent_classes() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4
    labels = np.repeat(np.arange(3), 40)
    features = centres[labels] + rng.normal(size=(120, 8))
    scores, picked = baseline.fit_and_score(features, labels, centres, [4], multi_label=False)
    assert scores.shape == (3, 4) and list(scores.argmax(1)) == [0, 1, 2]
    assert np.all(scores[:, 3] < -1e8) and picked[0] in baseline.C_GRID
    hot = np.zeros((120, 3))
    hot[np.arange(120), labels] = 1
    decisions, _ = baseline.fit_and_score(features, hot, centres, [3], multi_label=True)
    assert list(decisions.argmax(1)) == [0, 1, 2]


def test_both_tools_end_to_end(tiny: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert input_stats.main(["--cfg", CFG, "--json", *tiny]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["clips"] == 24 and stats["AUDIO_DATA.NORM_STD"] > 0
    out = tmp_path / "baseline.json"
    assert baseline.main(["--cfg", CFG, "--json", str(out), *tiny]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text())
    assert printed["train_clips"] == 24 and printed["test_clips"] == 12 and 0 <= printed["top1_acc"] <= 100
    assert input_stats.main(["--cfg", CFG, "AUDIO_DATA.NORM_STD", "0"]) == 2

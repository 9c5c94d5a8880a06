"""The synthetic demo dataset and its CLI."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from playitback.data.annotations import read_annotations
from playitback.data.audio_io import FileAudioReader
from playitback.synthetic.demo import demo_classes, make_demo_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = {"num_classes": 8, "train_per_class": 2, "test_per_class": 1, "clip_secs": 1.5, "sample_rate": 16000}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _events(summary: dict) -> dict[str, tuple[float, float]]:
    with open(summary["events_csv"], newline="") as handle:
        return {row["uid"]: (float(row["event_start_s"]), float(row["event_stop_s"])) for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=3, **TINY)


def test_same_seed_same_bytes(demo: dict, tmp_path: Path) -> None:
    again = make_demo_dataset(tmp_path / "again", seed=3, **TINY)
    assert _tree_bytes(again["out_dir"]) == _tree_bytes(demo["out_dir"])
    other = make_demo_dataset(tmp_path / "other", seed=4, **TINY)
    other_bytes, demo_bytes = _tree_bytes(other["out_dir"]), _tree_bytes(demo["out_dir"])
    assert other_bytes.keys() == demo_bytes.keys()
    assert other_bytes["audio/200 hz pulsed 10 per s/train00_0000.wav"] != demo_bytes["audio/200 hz pulsed 10 per s/train00_0000.wav"]


def test_annotations_and_audio_layout(demo: dict) -> None:
    names = Path(demo["classes_txt"]).read_text().splitlines()
    assert names == demo["class_names"] and len(names) == 8
    for split, per_class in (("train", 2), ("test", 1)):
        records = read_annotations(demo[f"{split}_csv"], "vggsound")
        assert Counter(r.labels[0] for r in records) == {class_id: per_class for class_id in range(8)}
        for record in records:
            name = names[record.labels[0]]
            assert record.label_names == (name,) and record.source == f"{name}/{record.uid}"
        reader = FileAudioReader(demo["audio_dir"], "wav", 16000)
        for record in records:
            info = sf.info(reader.path(record))
            assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 24000)
    assert demo["num_train"] == 16 and demo["num_test"] == 8


def test_events_lie_inside_clips_and_carry_the_class_rate(demo: dict) -> None:
    events = _events(demo)
    assert len(events) == demo["num_train"] + demo["num_test"]
    pitches, rates = demo_classes(8)
    np.testing.assert_allclose(demo["class_rates_hz"], [10, 26] * 4)
    np.testing.assert_allclose(demo["class_pitches_hz"], np.repeat(200.0 * 2.0 ** np.arange(0, 5, 4 / 3), 2))
    reader = FileAudioReader(demo["audio_dir"], "wav", 16000)
    for record in read_annotations(demo["train_csv"], "vggsound"):
        start, stop = events[record.uid]
        assert 0.0 < start < stop < TINY["clip_secs"]
        assert 0.4 <= stop - start <= 0.7 + 1e-9
        # The event is the loudest part of the clip and its power envelope repeats at the class rate (+-3 % jitter).
        audio = reader(record)
        first, last = round(start * 16000), round(stop * 16000)
        event = audio[first:last].astype(np.float64)
        rest = np.concatenate([audio[:first], audio[last:]]).astype(np.float64)
        assert np.mean(event**2) > 2 * np.mean(rest**2)
        power = event**2 - np.mean(event**2)
        spectrum = np.abs(np.fft.rfft(power, 16000 * 4))
        freqs = np.fft.rfftfreq(16000 * 4, 1 / 16000)
        band = (freqs > 5) & (freqs < 40)
        peak = freqs[band][np.argmax(spectrum[band])]
        assert peak == pytest.approx(rates[record.labels[0]], rel=0.08), record.uid


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes=1: the demo supports 2 to 32 classes"):
        make_demo_dataset(tmp_path, num_classes=1)
    with pytest.raises(ValueError, match="clip_secs=0.5: clips must be at least 1 s long"):
        make_demo_dataset(tmp_path, clip_secs=0.5)
    with pytest.raises(ValueError, match="need at least 1 each"):
        make_demo_dataset(tmp_path, train_per_class=0)


def test_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "make_demo_data.py"), "--out", str(tmp_path / "cli"), "--seed", "3",
         "--num-classes", "8", "--train-per-class", "2", "--test-per-class", "1", "--clip-secs", "1.5"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "16 train + 8 test clips" in result.stdout and "7: 3200 hz pulsed 26 per s" in result.stdout
    reference = make_demo_dataset(tmp_path / "api", seed=3, **TINY)
    assert _tree_bytes(tmp_path / "cli") == _tree_bytes(reference["out_dir"])

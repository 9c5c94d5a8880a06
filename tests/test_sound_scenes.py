"""The sound-scene generator (playitback.synthetic.sound_scenes, tools/make_sound_data.py): layout, determinism and event
times checked against an independent measure (librosa frame RMS)."""
from __future__ import annotations

import contextlib
import csv
import io
import shutil
from collections import Counter
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from playitback.data.annotations import read_annotations, read_class_list
from playitback.data.events import load_event_spans
from playitback.synthetic import sound_scenes
from playitback.synthetic.sound_scenes import (
    SOUND_CLASSES,
    SourceToolError,
    find_soundfont,
    make_sound_scenes,
    mix_scene,
    render_event_bank,
    render_source_bank,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
import make_sound_data  # noqa: E402


def _sources_missing() -> str:
    missing = [tool for tool in ("fluidsynth", "espeak-ng") if shutil.which(tool) is None]
    try:
        find_soundfont()
    except SourceToolError:
        missing.append("a General-MIDI SoundFont")
    return ", ".join(missing)


needs_sources = pytest.mark.skipif(bool(_sources_missing()), reason=f"sound sources absent ({_sources_missing()}); "
                                   f"install them with `apt-get install {sound_scenes.DEBIAN_PACKAGES}`")


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _loud_frames(audio: np.ndarray, below_max_db: float, hop: int = 160) -> np.ndarray:
    """Times (s) of the centres of the 20 ms frames (librosa RMS) within ``below_max_db`` dB of the loudest one."""
    rms = librosa.feature.rms(y=audio, frame_length=2 * hop, hop_length=hop, center=True)[0]
    loud = np.flatnonzero(20 * np.log10(np.maximum(rms, 1e-12) / rms.max()) > -below_max_db)
    return loud * hop / RATE


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small dataset written by the command-line tool, and what the tool printed."""
    if _sources_missing():
        pytest.skip(f"sound sources absent ({_sources_missing()})")
    out = tmp_path_factory.mktemp("scenes")
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        code = make_sound_data.main(["--out", str(out), "--num-classes", "3", "--train-per-class", "3",
                                     "--val-per-class", "1", "--test-per-class", "2", "--seed", "5", "--jobs", "2"])
    assert code == 0
    return {"out_dir": out, "audio_dir": out / "audio", "annotations_dir": out / "annotations",
            "events_csv": out / "annotations" / "events.csv", "printed": capture.getvalue()}


@needs_sources
def test_layout_is_a_custom_dataset_with_events_for_every_clip(scenes: dict) -> None:
    annotations = scenes["annotations_dir"]
    class_index = read_class_list(annotations / "classes.txt")
    assert list(class_index) == ["piano", "marimba", "church_organ"]
    uids = []
    for split, per_class in (("train", 3), ("val", 1), ("test", 2)):
        records = read_annotations(annotations / f"{split}.csv", "custom", class_index=class_index)
        assert Counter(r.labels[0] for r in records) == {0: per_class, 1: per_class, 2: per_class}
        for record in records:
            info = sf.info(scenes["audio_dir"] / record.source)
            assert (info.samplerate, info.channels, info.subtype, info.frames) == (RATE, 1, "PCM_16", 5 * RATE)
            assert record.source.startswith(f"{record.label_names[0]}/{split}_")
        uids += [r.uid for r in records]
    spans = load_event_spans(scenes["events_csv"])
    assert sorted(spans) == sorted(uids) and all(len(s) == 1 for s in spans.values())
    for (start, stop), in spans.values():
        assert 0.1 <= start < stop <= 4.9 and 0.2 <= stop - start <= 1.0
    assert "18 clips (9 train, 3 val, 6 test), 3 classes, 90 s of audio at 16000 Hz" in scenes["printed"]
    with open(annotations / "scenes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 18 and all(-6 <= float(r["event_snr_db"]) <= 6 for r in rows)


@needs_sources
def test_same_seed_same_bytes_whatever_the_jobs(tmp_path: Path) -> None:
    tiny = {"num_classes": 2, "train_per_class": 1, "val_per_class": 0, "test_per_class": 1}
    one = make_sound_scenes(tmp_path / "one", seed=1, jobs=1, **tiny)
    two = make_sound_scenes(tmp_path / "two", seed=1, jobs=2, **tiny)
    assert _tree_bytes(one["out_dir"]) == _tree_bytes(two["out_dir"])
    assert not (one["annotations_dir"] / "val.csv").exists()


@needs_sources
def test_another_seed_other_clips(scenes: dict, tmp_path: Path) -> None:
    other = make_sound_scenes(tmp_path, num_classes=2, train_per_class=1, val_per_class=0, test_per_class=1, seed=6)
    assert (other["audio_dir"] / "piano/train_00000.wav").read_bytes() != \
        (scenes["audio_dir"] / "piano/train_00000.wav").read_bytes()


@needs_sources
def test_events_are_where_events_csv_says(tmp_path: Path) -> None:
    # A loud event (30 dB over plain room tone, no babble or distractors): the frames near the mixture's maximum
    # must start at the annotated onset and stay inside the annotated span.
    loud = make_sound_scenes(tmp_path, num_classes=4, train_per_class=1, val_per_class=0, test_per_class=1,
                             event_snr_db=(30.0, 30.0), max_distractors=0, babble_probability=0.0, seed=7, jobs=2)
    spans = load_event_spans(loud["events_csv"])
    for uid, [(start, stop)] in spans.items():
        audio, _ = sf.read(loud["audio_dir"] / f"{uid}.wav", dtype="float32")
        times = _loud_frames(audio, 20.0)
        assert abs(times[0] - start) <= 0.05, uid  # an organ or a bowed string takes tens of ms to rise
        assert start - 0.02 <= times.min() and times.max() <= stop + 0.02, uid


@needs_sources
def test_mixed_event_track_sounds_exactly_inside_its_span() -> None:
    font = find_soundfont()
    bank = render_source_bank(3, RATE, font, num_talkers=2, num_distractor_notes=6, num_spoken_words=2, jobs=2)
    for class_id in (0, 7, 14):  # a phrase, fast-decaying strikes and a sound effect
        events = render_event_bank(SOUND_CLASSES[class_id], 3, np.random.default_rng(class_id), font, RATE)
        for k, event in enumerate(events):
            assert 0.2 * RATE <= len(event) <= 1.0 * RATE
            scene = mix_scene(np.random.default_rng([class_id, k]), event, bank, 5.0)
            first, last = round(scene.event_start_s * RATE), round(scene.event_stop_s * RATE)
            assert not scene.event[:first].any() and not scene.event[last:].any()
            times = _loud_frames(scene.event, 40.0)
            assert abs(times[0] - scene.event_start_s) <= 0.02 and abs(times[-1] - scene.event_stop_s) <= 0.05
            # Its SNR against what else the clip holds over the span is the one reported.
            rest = scene.audio[first:last] - scene.event[first:last]
            snr = 20 * np.log10(np.sqrt(np.mean(scene.event[first:last].astype(np.float64) ** 2)) /
                                np.sqrt(np.mean(rest.astype(np.float64) ** 2)))
            if scene.num_distractors == 0:
                assert abs(snr - scene.event_snr_db) < 0.1
            assert np.abs(scene.audio).max() <= 0.9 + 1e-6


def test_missing_tools_are_named_with_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sound_scenes.shutil, "which", lambda name: None)
    monkeypatch.setattr(sound_scenes, "SOUNDFONT_CANDIDATES", (str(tmp_path / "none.sf2"),))
    with pytest.raises(SourceToolError, match="apt-get install fluid-soundfont-gm"):
        make_sound_scenes(tmp_path / "out")
    with pytest.raises(SourceToolError, match="fluidsynth is not on PATH.*apt-get install fluidsynth"):
        sound_scenes.render_midi([], tmp_path / "none.sf2", RATE, 1.0)


def test_cli_rejects_bad_arguments_before_rendering(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert make_sound_data.main(["--out", str(tmp_path), "--num-classes", "99"]) == 2
    assert "num_classes=99: choose 2 to 24 classes" in capsys.readouterr().err

"""tools/predict.py end to end with a tiny random-weight checkpoint.

The reference is a slow per-window computation: librosa decodes and resamples each file, the windows are cut by hand,
and each goes alone through the public playback_pyramid and the model.
"""
from __future__ import annotations

import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from playitback.config import dump_config, load_config
from playitback.data import playback_pyramid
from playitback.data.annotations import write_records_csv
from playitback.data.records import ClipRecord
from playitback.inference import load_inference_model, stitch_windows

REPO = Path(__file__).resolve().parents[1]

import predict  # noqa: E402
from engine_utils import TINY_MODEL  # noqa: E402

CFG = str(REPO / "configs" / "Demo" / "PlayItBackX2.yaml")
# The shared tiny model, on 1 s crops of 32 frames and 32 mel bands to keep the export and inference fast.
TINY = [*TINY_MODEL, "AUDIO_DATA.CLIP_SECS", "1.0", "AUDIO_DATA.FRAMES0", "32", "AUDIO_DATA.NUM_FREQUENCIES", "32",
        "MODEL.NUM_CLASSES", "6"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("predict")
    opts = TINY + ["VGGSOUND.ANNOTATIONS_DIR", str(root / "no-annotations")]
    cfg = load_config(CFG, opts)
    torch.manual_seed(0)
    model = load_inference_model(cfg, None, torch.device("cpu"))
    checkpoint = root / "tiny.pyth"
    torch.save({"model_state": model.state_dict(), "cfg": dump_config(cfg)}, checkpoint)
    rng = np.random.default_rng(0)
    audio = root / "audio"
    (audio / "sub").mkdir(parents=True)
    sf.write(audio / "long_stereo.wav", rng.uniform(-0.5, 0.5, (int(44100 * 2.5), 2)), 44100)  # 3 windows
    sf.write(audio / "sub" / "short.flac", 0.3 * np.sin(np.arange(6400) * 0.05), 16000)  # 0.4 s: padded
    (audio / "empty.wav").write_bytes(b"")
    (audio / "garbage.wav").write_bytes(b"not audio at all" * 20)
    (root / "nothing_here").mkdir()
    return {"root": root, "cfg": cfg, "opts": opts, "model": model, "checkpoint": checkpoint, "audio": audio}


def _run(setup: dict, *args: str) -> int:
    return predict.main(["--cfg", CFG, "--checkpoint", str(setup["checkpoint"]), *args, *setup["opts"]])


def _reference_window_probs(setup: dict, path: Path, starts_s: list[float],
                            exit_after: int | None = None) -> np.ndarray:
    """Per window the full forward's probabilities, or those of ``playback_logits[exit_after]``."""
    cfg, model = setup["cfg"], setup["model"]
    waveform, _ = librosa.load(path, sr=16000, mono=True)
    probs = []
    for start in starts_s:
        crop = np.zeros(16000, np.float32)
        piece = waveform[int(round(start * 16000)):][:16000]
        crop[: len(piece)] = piece
        playbacks = playback_pyramid(torch.from_numpy(crop)[None], 16000, 3, frames0=32, window_ms=20,
                                     n_mels=cfg.AUDIO_DATA.NUM_FREQUENCIES)
        if len(piece) < 16000:  # as in training (AUDIO_DATA.PAD_MODE edge): the last frame inside the audio repeats
            for i, playback in enumerate(playbacks):
                last = len(piece) // round(16000 / (32 * (i + 1)))
                playback[0, last + 1:] = playback[0, last]
        with torch.no_grad():
            outputs = model(playbacks)
        logits = outputs.logits if exit_after is None else outputs.playback_logits[exit_after]
        probs.append(logits.softmax(-1)[0].numpy())
    return np.array(probs)


def test_predictions_match_a_per_window_reference(setup: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.json"
    code = _run(setup, str(setup["audio"]), str(setup["root"] / "nothing_here"), "--hop", "0.75", "--top-k", "3",
                "--batch-size", "2", "--json", str(out), "--embeddings", str(tmp_path / "emb.npy"))
    captured = capsys.readouterr()
    assert code == 1  # some inputs failed, the others were processed
    report = json.loads(out.read_text())
    files = {Path(f["file"]).name: f for f in report["files"]}
    assert set(files) == {"long_stereo.wav", "short.flac"}
    long = files["long_stereo.wav"]
    assert [(w["start_s"], w["end_s"]) for w in long["windows"]] == [(0.0, 1.0), (0.75, 1.75), (1.5, 2.5)]
    assert long["duration_s"] == pytest.approx(2.5)
    reference = _reference_window_probs(setup, setup["audio"] / "long_stereo.wav", [0.0, 0.75, 1.5])
    for window, expected in zip(long["windows"], reference):
        best = int(np.argmax(expected))
        assert window["top_k"][0]["class_id"] == best
        assert window["top_k"][0]["probability"] == pytest.approx(float(expected[best]), abs=1e-4)
    file_mean = reference.mean(0)
    assert [e["class_id"] for e in long["top_k"]] == list(np.argsort(-file_mean)[:3])
    assert long["top_k"][0]["probability"] == pytest.approx(float(file_mean.max()), abs=1e-4)
    short = files["short.flac"]
    assert len(short["windows"]) == 1 and short["duration_s"] == pytest.approx(0.4)
    short_ref = _reference_window_probs(setup, setup["audio"] / "sub" / "short.flac", [0.0])[0]
    assert short["top_k"][0]["probability"] == pytest.approx(float(short_ref.max()), abs=1e-4)
    # Bad inputs: named in the JSON and on stderr.
    errors = {Path(e["file"]).name: e["error"] for e in report["errors"]}
    assert set(errors) == {"empty.wav", "garbage.wav", "nothing_here"}
    assert "empty file" in errors["empty.wav"] and "no audio files" in errors["nothing_here"]
    assert "skipped:" in captured.err and "garbage.wav" in captured.err
    # The table names every processed file, with class ids (no annotation files, no --classes).
    assert "long_stereo.wav  (2.50 s, 3 windows)" in captured.out
    # Embeddings: one row per file (mean of its windows' fused features), files listed in row order.
    embeddings = np.load(tmp_path / "emb.npy")
    listing = json.loads((tmp_path / "emb.json").read_text())
    assert embeddings.shape == (2, 16) and [Path(p).name for p in listing] == [Path(f["file"]).name
                                                                            for f in report["files"]]


def test_class_names_from_file_and_from_annotations(setup: dict, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    names = ["dog", "cat", "car", "rain", "bell", "bird"]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    clip = str(setup["audio"] / "sub" / "short.flac")
    assert _run(setup, clip, "--classes", str(tmp_path / "classes.txt"), "--json", "--top-k", "6") == 0
    entries = json.loads(capsys.readouterr().out)["files"][0]["top_k"]
    assert sorted(e["label"] for e in entries) == sorted(names)
    assert all(names[e["class_id"]] == e["label"] for e in entries)

    (tmp_path / "bad.txt").write_text("dog\ncat\n")
    assert _run(setup, clip, "--classes", str(tmp_path / "bad.txt")) == 2
    assert "2 names for a model with 6 classes" in capsys.readouterr().err

    annotations = tmp_path / "annotations"
    write_records_csv([ClipRecord(f"c{i}", f"c{i}", (i,), label_names=(f"name{i}",)) for i in (0, 2, 5)],
                      annotations / "train.csv")
    write_records_csv([ClipRecord("c1", "c1", (1,), label_names=("name1",))], annotations / "test.csv")
    cfg = load_config(CFG, setup["opts"] + ["VGGSOUND.ANNOTATIONS_DIR", str(annotations)])
    assert predict.class_names_from_config(cfg) == ["name0", "name1", "name2", "3", "4", "name5"]


def test_checkpoint_that_does_not_fit_the_config(setup: dict, capsys: pytest.CaptureFixture) -> None:
    code = predict.main(["--cfg", CFG, "--checkpoint", str(setup["checkpoint"]), str(setup["audio"]),
                         *setup["opts"], "MODEL.NUM_CLASSES", "9"])
    assert code == 2
    assert "does not fit the model of this config" in capsys.readouterr().err
    assert predict.main(["--cfg", CFG, "--checkpoint", str(setup["root"] / "missing.pyth"), str(setup["audio"]),
                         *setup["opts"]]) == 2


def test_plot_writes_one_png_per_file(setup: dict, tmp_path: Path) -> None:
    clip = str(setup["audio"] / "long_stereo.wav")
    assert _run(setup, clip, "--plot", str(tmp_path / "figs"), "--hop", "0.5") == 0
    png = tmp_path / "figs" / "long_stereo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_stitched_timeline_places_windows_in_time(setup: dict) -> None:
    results, problems = predict.predict_files(setup["cfg"], setup["model"], [setup["audio"] / "long_stereo.wav"],
                                              hop_s=1.0, batch_size=8)
    assert problems == []
    windows = results[0].windows
    assert [w.start_s for w in windows] == [0.0, 1.0, 1.5]
    timeline = stitch_windows(windows)
    assert timeline.spectrogram.shape == (80, 32) and timeline.duration_s == pytest.approx(2.5)
    np.testing.assert_array_equal(timeline.spectrogram[:32], windows[0].spectrogram)
    np.testing.assert_array_equal(timeline.spectrogram[48:], windows[2].spectrogram)
    assert timeline.saliency.shape == (3, 80)


def test_real_clips(setup: dict, real_clips: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(setup, *map(str, real_clips), "--json", "--hop", "2.5", "--batch-size", "8") == 0
    report = json.loads(capsys.readouterr().out)
    assert [Path(f["file"]).name for f in report["files"]] == [p.name for p in real_clips]
    for entry in report["files"]:
        assert entry["duration_s"] == pytest.approx(10.0, abs=0.02)
        assert [w["start_s"] for w in entry["windows"]][:4] == [0.0, 2.5, 5.0, 7.5]
        assert sum(e["probability"] for e in entry["top_k"]) <= 1.0 + 1e-6
    assert report["errors"] == []


@pytest.mark.parametrize(("threshold", "exit_playback"), [("0.0", 0), ("1.0", 2)])
def test_anytime_prediction_reports_each_windows_exit(setup: dict, tmp_path: Path, threshold: str,
                                                      exit_playback: int) -> None:
    """TEST.EXIT_POLICY: at threshold 0 every window stops after playback 0 and gets playback 0's prediction; at 1.0
    none is sure enough (a softmax never reaches 1 here) and every window gets the full forward's (the per-window
    reference)."""
    out = tmp_path / "anytime.json"
    long = setup["audio"] / "long_stereo.wav"
    code = predict.main(["--cfg", CFG, "--checkpoint", str(setup["checkpoint"]), str(long), "--hop", "0.75",
                         "--json", str(out), *setup["opts"], "TEST.EXIT_POLICY", "max_prob",
                         "TEST.EXIT_THRESHOLD", threshold])
    assert code == 0
    windows = json.loads(out.read_text())["files"][0]["windows"]
    reference = _reference_window_probs(setup, long, [0.0, 0.75, 1.5], 0 if exit_playback == 0 else None)
    assert [w["exit_playback"] for w in windows] == [exit_playback] * 3
    for window, expected in zip(windows, reference):
        assert window["top_k"][0]["class_id"] == int(np.argmax(expected))
        assert window["top_k"][0]["probability"] == pytest.approx(float(expected.max()), abs=1e-4)
        assert window["replayed_segments"] == []

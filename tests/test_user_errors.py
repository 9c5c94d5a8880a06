"""Errors a user causes end tools/run_net.py with one line naming the key and the fix, and exit status 2; --debug
shows the traceback. Short reads (a partial download, a cut file) are reported as "short" in bad_files.txt and
counted in the epoch's metrics, in training and in evaluation."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import run_net
from engine_utils import run_opts
from playitback.data.audio_io import ShortAudioError
from playitback.engine.trainer import RandomWeightsError

PLAYITBACK = "configs/Demo/PlayItBackX2.yaml"


def run(capsys: pytest.CaptureFixture, data: Path, out: Path, *opts: str, flags: tuple[str, ...] = ()
        ) -> tuple[int, str]:
    """run_net's exit status and what it printed to stderr."""
    status = run_net.main([*flags, "--cfg", PLAYITBACK, *run_opts(data, out, epochs=1), *opts])
    return status, capsys.readouterr().err


def bad_annotations(data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "bad_annotations"
    shutil.copytree(data / "annotations", root)
    (root / "train.csv").write_text("this is not, an annotation\nfile\n")
    return root


# (overrides, what the one line must say): each a mistake a user makes.
CASES = {
    "unknown_key": (["SOLVER.BASE_LRR", "0.1"], "SOLVER.BASE_LR"),
    "frozen_without_weights": (["MODEL.ALLOW_RANDOM_WEIGHTS", "False", "MODEL.FREEZE_ENCODER", "True"],
                               "TRAIN.CHECKPOINT_FILE_PATH"),
    "wrong_class_count": (["MODEL.NUM_CLASSES", "3"], "MODEL.NUM_CLASSES"),
    "missing_test_checkpoint": (["TRAIN.ENABLE", "False", "TEST.ENABLE", "True", "TEST.CHECKPOINT_FILE_PATH",
                                 "{tmp}/nothing_here.pyth"], "TEST.CHECKPOINT_FILE_PATH"),
    "missing_start_checkpoint": (["TRAIN.CHECKPOINT_FILE_PATH", "{tmp}/nothing_here.pyth"],
                                 "TRAIN.CHECKPOINT_FILE_PATH"),
    "missing_annotations": (["VGGSOUND.ANNOTATIONS_DIR", "{tmp}/no_such_folder"], "ANNOTATIONS_DIR"),
    "bad_annotation_file": (["VGGSOUND.ANNOTATIONS_DIR", "{bad}"], "train.csv"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_error_is_one_line_and_exit_status_2(case: str, tiny_data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    opts, named = CASES[case]
    opts = [o.format(tmp=tmp_path, bad=bad_annotations(tiny_data, tmp_path) if "{bad}" in o else "") for o in opts]
    status, err = run(capsys, tiny_data, tmp_path / "run", *opts)
    assert status == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert named in err, err


def test_debug_flag_shows_the_traceback(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(RandomWeightsError, match="TRAIN.CHECKPOINT_FILE_PATH"):
        run(capsys, tiny_data, tmp_path / "run", "MODEL.ALLOW_RANDOM_WEIGHTS", "False", "MODEL.FREEZE_ENCODER",
            "True", flags=("--debug",))


def cut(path: Path, keep_bytes: int, fmt: str) -> Path:
    """Rewrite `path` in `fmt` and keep its first `keep_bytes` bytes (a partial download)."""
    samples, rate = sf.read(path, dtype="float32")
    encoded = io.BytesIO()
    sf.write(encoded, samples, rate, format=fmt, subtype="PCM_16")
    target = path.with_suffix(f".{fmt.lower()}")
    target.write_bytes(encoded.getvalue()[:keep_bytes])
    if target != path:
        path.unlink()
    return target


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_a_cut_file_is_reported_short_in_training_and_evaluation(fmt: str, tiny_data: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    audio = data / "audio"
    if fmt == "FLAC":  # every clip as FLAC, the extension the config then reads
        for wav in audio.rglob("*.wav"):
            cut(wav, wav.stat().st_size * 2, fmt)
    ext = fmt.lower()
    train_clip = sorted(audio.rglob(f"train00_0000.{ext}"))[0]
    test_clip = sorted(audio.rglob(f"test00_0000.{ext}"))[0]
    for clip in (train_clip, test_clip):
        cut(clip, 3000, fmt)  # 3,000 bytes of a 2 s clip
    out = tmp_path / "run"
    status, err = run(capsys, data, out, "VGGSOUND.AUDIO_EXT", f".{ext}", "DATA_LOADER.ON_BAD_FILE", "skip",
                      "DATA_LOADER.MAX_BAD_FRACTION", "0.5", "TEST.ENABLE", "True")
    assert status == 0, err
    bad = (out / "bad_files.txt").read_text().splitlines()
    assert any(line.startswith("short:") and "train00_0000" in line for line in bad), bad
    assert any(line.startswith("short:") and "test00_0000" in line for line in bad), bad
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    [train_epoch] = [r for r in records if r["split"] == "train_epoch"]
    [test_final] = [r for r in records if r["split"] == "test_final"]
    assert train_epoch["short_items"] == 1 and train_epoch["replaced_items"] == 1
    assert test_final["clips_short"] == 1 and test_final["clips_unreadable"] == 1
    assert test_final["clips"] == test_final["clips_listed"] - 1


def test_the_short_threshold_is_a_fraction_of_the_annotated_segment(tmp_path: Path) -> None:
    """An annotated segment asks for its own length, a record to the end of its file for the clip length."""
    from playitback.data.dataset import AudioClipDataset, LabelFormat
    from playitback.data.records import ClipRecord

    rate, clip = 100, 200  # 2 s clips at 100 Hz
    lengths = {"seg_ok": 60, "seg_short": 40, "open_ok": 100, "open_short": 99}
    records = [ClipRecord(uid="seg_ok", source="seg_ok", labels=(0,), start_s=1.0, stop_s=2.0),  # asks for 1 s
               ClipRecord(uid="seg_short", source="seg_short", labels=(0,), start_s=1.0, stop_s=2.0),
               ClipRecord(uid="open_ok", source="open_ok", labels=(0,)),  # asks for the 2 s clip
               ClipRecord(uid="open_short", source="open_short", labels=(0,))]
    dataset = AudioClipDataset(records, lambda r: np.zeros(lengths[r.uid], np.float32), mode="val",
                               clip_samples=clip, sample_rate=rate, label_format=LabelFormat.SINGLE, num_classes=1,
                               min_audio_fraction=0.5)
    dataset[0], dataset[2]  # 60 >= 0.5 x 100 and 100 >= 0.5 x 200
    for item, (decoded, asked) in ((1, ("0.40", "1.00")), (3, ("0.99", "2.00"))):
        with pytest.raises(ShortAudioError, match=rf"^short: clip .* decodes to {decoded} s .* says {asked} s"):
            dataset[item]

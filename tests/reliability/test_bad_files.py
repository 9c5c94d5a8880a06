"""Fault injection: a dataset holding every kind of bad or unusual audio file.

Bad files (missing, empty, zero frames, not audio, truncated FLAC, NaN/inf samples, a missing HDF5 key, audio far
shorter than the clip its annotation asks for) are replaced
by other items, counted and named in the log and OUTPUT_DIR/bad_files.txt when DATA_LOADER.ON_BAD_FILE is skip, and
raise a clear error naming the file when it is raise. Unusual but valid files (silence, another sample rate, stereo,
shorter than the clip above DATA_LOADER.MIN_AUDIO_FRACTION, longer than the clip) are read correctly.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from engine_utils import REPO, TINY_MODEL, metrics, run_net
from playitback.data.audio_io import AudioReadError, Hdf5AudioReader
from playitback.data.dataset import AudioClipDataset, LabelFormat
from playitback.data.records import ClipRecord

RATE = 16000
BAD = ("missing.wav", "empty.wav", "zero_frames.wav", "not_audio.wav", "truncated.flac", "nan.wav", "inf.wav",
       "cut.wav")
MIN_AUDIO_FRACTION = 0.5  # the default of DATA_LOADER.MIN_AUDIO_FRACTION
ODD = ("silent.wav", "rate8k.wav", "stereo.wav", "short.wav", "long.wav")


def _tone(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.1 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave


def make_faulty_dataset(root: Path, good_per_class: int = 6) -> Path:
    audio = root / "audio"
    audio.mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        for i in range(good_per_class):
            sf.write(audio / f"{label}{i}.wav", (rng.standard_normal(2 * RATE) * 0.05).astype(np.float32), RATE)
            rows.append((f"{label}{i}.wav", label))
    (audio / "empty.wav").write_bytes(b"")
    sf.write(audio / "zero_frames.wav", np.zeros(0, dtype=np.float32), RATE)
    (audio / "not_audio.wav").write_text("this is a text file, not audio\n" * 20)
    sf.write(audio / "full.flac", _tone(2.0), RATE)
    data = (audio / "full.flac").read_bytes()
    (audio / "truncated.flac").write_bytes(data[: len(data) // 3])
    (audio / "full.flac").unlink()
    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        wave = _tone(2.0)
        wave[1000] = value
        sf.write(audio / name, wave, RATE, subtype="FLOAT")
    sf.write(audio / "silent.wav", np.zeros(2 * RATE, dtype=np.float32), RATE)
    sf.write(audio / "rate8k.wav", _tone(2.0, 8000), 8000)
    sf.write(audio / "stereo.wav", _tone(2.0, channels=2), RATE)
    sf.write(audio / "short.wav", _tone(1.5), RATE)  # 75% of the 2 s clip: padded
    sf.write(audio / "cut.wav", _tone(0.3), RATE)  # 15%: a partial download
    sf.write(audio / "long.wav", _tone(9.0), RATE)
    rows += [(name, "a") for name in BAD + ODD]
    lists = root / "lists"
    lists.mkdir()
    (lists / "classes.txt").write_text("a\nb\n")
    body = "file,label\n" + "".join(f"{file},{label}\n" for file, label in rows)
    (lists / "train.csv").write_text(body)
    tested = "".join(f"{file},{label}\n" for file, label in rows if file not in BAD)
    (lists / "test.csv").write_text("file,label\n" + tested)
    return root


def _dataset(root: Path, skip: bool, pyramid=None) -> AudioClipDataset:
    from playitback.data.annotations import read_annotations, read_class_list
    from playitback.data.audio_io import FileAudioReader

    records = read_annotations(root / "lists" / "train.csv", "custom",
                               class_index=read_class_list(root / "lists" / "classes.txt"))
    return AudioClipDataset(records, FileAudioReader(root / "audio", "", RATE), mode="train", clip_samples=2 * RATE,
                            sample_rate=RATE, label_format=LabelFormat.SINGLE, num_classes=2, skip_bad_files=skip,
                            pyramid=pyramid, min_audio_fraction=MIN_AUDIO_FRACTION)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_faulty_dataset(tmp_path_factory.mktemp("faulty"))


@pytest.mark.parametrize("name, message", [
    ("missing.wav", "audio file not found"), ("empty.wav", "cannot decode as audio"),
    ("zero_frames.wav", "no audio samples after decoding"), ("not_audio.wav", "cannot decode as audio"),
    ("truncated.flac", "truncated"), ("nan.wav", "NaN or infinite"), ("inf.wav", "NaN or infinite"),
    ("cut.wav", "decodes to 0.30 s of audio, but its clip length says 2.00 s"),
])
def test_each_bad_file_raises_naming_the_file(faulty: Path, name: str, message: str) -> None:
    dataset = _dataset(faulty, skip=False)
    index = next(i for i, r in enumerate(dataset.records) if r.source == name)
    with pytest.raises(AudioReadError) as err:
        dataset[index]
    assert name in str(err.value) and message in str(err.value)


def test_unusual_valid_files_are_read(faulty: Path) -> None:
    from playitback.data.spectrogram import PlaybackPyramid

    dataset = _dataset(faulty, skip=False, pyramid=PlaybackPyramid(RATE, 2, frames0=32))
    for name in ODD:
        index = next(i for i, r in enumerate(dataset.records) if r.source == name)
        item = dataset[index]
        assert item["skipped"] == []
        assert [p.shape for p in item["playbacks"]] == [(32, 128), (64, 128)]
        assert all(np.isfinite(p.numpy()).all() for p in item["playbacks"])


def test_skip_replaces_and_names_bad_files(faulty: Path) -> None:
    dataset = _dataset(faulty, skip=True)
    skipped = [msg for i in range(len(dataset)) for msg in dataset[i]["skipped"]]
    assert sorted(name for name in BAD if any(name in msg for msg in skipped)) == sorted(BAD)


def test_training_run_skips_counts_and_logs_bad_files(faulty: Path, tmp_path: Path) -> None:
    opts = ["NUM_GPUS", "0", "TRAIN.DATASET", "custom", "TEST.DATASET", "custom", *TINY_MODEL, "MODEL.NUM_CLASSES", "2",
            "CUSTOM.AUDIO_DATA_DIR", str(faulty / "audio"), "CUSTOM.ANNOTATIONS_DIR", str(faulty / "lists"),
            "TRAIN.BATCH_SIZE", "8", "TEST.BATCH_SIZE", "8", "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_EPOCHS", "0.0", "DATA_LOADER.NUM_WORKERS", "1",
            "OUTPUT_DIR", str(tmp_path / "run")]
    run_net("configs/Demo/MViT_pretrain.yaml", opts + ["DATA_LOADER.MAX_BAD_FRACTION", "0.5"])
    logged = (tmp_path / "run" / "bad_files.txt").read_text()
    # Every bad file met in the epoch is named (the shuffled epoch may meet some twice, as item or substitute).
    named = {name for name in BAD if name in logged}
    assert len(named) >= 3 and all(any(name in line for name in BAD) for line in logged.splitlines())
    assert not any(name in logged for name in ODD)
    assert "unreadable item(s) were replaced" in (tmp_path / "run" / "stdout.log").read_text()
    assert metrics(tmp_path / "run", "val_epoch")
    # Too many bad files: the run stops and says why.
    result = run_net("configs/Demo/MViT_pretrain.yaml",
                     opts[:-1] + [str(tmp_path / "strict"), "DATA_LOADER.MAX_BAD_FRACTION", "0.0"], check=False)
    assert result.returncode != 0
    assert "could not be read, more than DATA_LOADER.MAX_BAD_FRACTION" in result.stderr + result.stdout


def test_missing_hdf5_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "epic.hdf5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("P01_01", data=_tone(5.0)).attrs["sample_rate"] = RATE
    reader = Hdf5AudioReader(path, RATE)
    assert reader(ClipRecord(uid="P01_01_0", source="P01_01", labels=(0, 1), start_s=1.0, stop_s=2.0)).shape == (RATE,)
    with pytest.raises(AudioReadError, match="P01_02"):
        reader(ClipRecord(uid="P01_02_0", source="P01_02", labels=(0, 1), start_s=1.0, stop_s=2.0))


# ---- val/test never substitute; absent files are left out at start (issue 12, items 2 and 3) ----------------------


def _custom_opts(root: Path, out: Path, *extra: str) -> list[str]:
    return ["NUM_GPUS", "0", "TRAIN.DATASET", "custom", "TEST.DATASET", "custom", *TINY_MODEL, "MODEL.NUM_CLASSES",
            "2", "CUSTOM.AUDIO_DATA_DIR", str(root / "audio"), "CUSTOM.ANNOTATIONS_DIR", str(root / "lists"),
            "TRAIN.BATCH_SIZE", "4", "TEST.BATCH_SIZE", "4", "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_EPOCHS", "0.0",
            "DATA_LOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out), *extra]


def _evaluate(cfg, records=None):
    from playitback.data.build import build_dataset, build_label_space, build_loader
    from playitback.engine.build import build_task
    from playitback.engine.evaluate import evaluate
    from playitback.models import build_model

    torch.manual_seed(0)
    task = build_task(cfg, build_model(cfg).eval(), torch.device("cpu"), train=False)
    dataset = build_dataset(cfg, "test", records, output_dir=Path(cfg.OUTPUT_DIR))
    result = evaluate(task, build_loader(cfg, dataset, "test"), dataset, build_label_space(cfg), cfg.OUTPUT_DIR,
                      split="test")
    return result.metrics, result


def test_unreadable_test_file_is_left_out_counted_and_named(faulty: Path, tmp_path: Path) -> None:
    """With ON_BAD_FILE skip a corrupt test file is not replaced (its substitute's views would arrive twice): the
    metrics are those of the readable clips alone, and say how many clips they cover."""
    from playitback.config import load_config
    from playitback.data.build import load_split_records

    lists = tmp_path / "lists"
    lists.mkdir()
    rows = (faulty / "lists" / "test.csv").read_text().splitlines()
    (lists / "classes.txt").write_text("a\nb\n")
    (lists / "train.csv").write_text("\n".join(rows) + "\n")
    (lists / "test.csv").write_text("\n".join(rows[:4] + ["not_audio.wav,a"] + rows[4:8]) + "\n")
    root = tmp_path
    (root / "audio").symlink_to(faulty / "audio")
    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml", _custom_opts(
        root, tmp_path / "run", "DATA_LOADER.ON_BAD_FILE", "skip", "TEST.NUM_ENSEMBLE_VIEWS", "2"))
    (tmp_path / "run").mkdir()
    metrics, details = _evaluate(cfg)
    assert (metrics["clips"], metrics["clips_unreadable"], metrics["clips_listed"]) == (7.0, 1.0, 8.0)
    assert "not_audio.wav" in (tmp_path / "run" / "bad_files.txt").read_text()
    assert "not_audio.wav" not in details.uids and len(details.uids) == 7
    readable = [r for r in load_split_records(cfg, "test") if r.source != "not_audio.wav"]
    reference, _ = _evaluate(cfg, readable)
    for key in ("top1_acc", "top5_acc", "mAP", "AUC"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-9), key


@pytest.fixture()
def incomplete(tmp_path: Path) -> Path:
    """12 listed training clips of which 3 have no file (as in real AudioSet/VGG-Sound copies), 4 test clips."""
    audio = tmp_path / "data" / "audio"
    audio.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{label}{i}.wav" for label in "ab" for i in range(6)]
    for name in names[3:]:
        sf.write(audio / name, (rng.standard_normal(2 * RATE) * 0.05).astype(np.float32), RATE)
    lists = tmp_path / "data" / "lists"
    lists.mkdir()
    (lists / "classes.txt").write_text("a\nb\n")
    (lists / "train.csv").write_text("file,label\n" + "".join(f"{n},{n[0]}\n" for n in names))
    (lists / "test.csv").write_text("file,label\n" + "".join(f"{n},{n[0]}\n" for n in names[4:8]))
    return tmp_path / "data"


def test_absent_files_are_left_out_at_start_not_counted_as_bad(incomplete: Path, tmp_path: Path) -> None:
    from playitback.config import load_config
    from playitback.engine import trainer

    out = tmp_path / "run"
    # MAX_BAD_FRACTION 0 still trains: absent files are not bad files.
    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml",
                      _custom_opts(incomplete, out, "DATA_LOADER.MAX_BAD_FRACTION", "0.0"))
    trainer.train(cfg)
    assert (out / "missing_train.txt").read_text().splitlines() == [
        f"a{i}\t{incomplete / 'audio' / f'a{i}.wav'}" for i in range(3)]
    assert "train: 9 of 12 clips found under" in (out / "stdout.log").read_text()
    assert not (out / "bad_files.txt").exists()
    assert metrics(out, "val_epoch")[-1]["clips"] == 4.0
    # Too few present: the run stops at start and names the first absent file.
    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml",
                      _custom_opts(incomplete, tmp_path / "strict", "DATA.MIN_FOUND_FRACTION", "0.8"))
    from playitback.data.build import MissingAudioError

    with pytest.raises(MissingAudioError, match=r"train: only 9 of 12 listed clips .*first absent: .*a0\.wav"):
        trainer.train(cfg)


def test_file_check_is_cached_per_list_and_invalidated_by_new_files(incomplete: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from playitback.config import load_config
    from playitback.data.audio_io import FileAudioReader
    from playitback.data.build import build_dataset

    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml", _custom_opts(incomplete, tmp_path / "run"))
    assert len(build_dataset(cfg, "train", output_dir=tmp_path)) == 9
    calls = []
    original = FileAudioReader.has_audio
    monkeypatch.setattr(FileAudioReader, "has_audio", lambda self, record: calls.append(1) or original(self, record))
    assert len(build_dataset(cfg, "train", output_dir=tmp_path)) == 9 and calls == []  # from the cache
    sf.write(incomplete / "audio" / "a0.wav", np.zeros(2 * RATE, dtype=np.float32), RATE)
    assert len(build_dataset(cfg, "train", output_dir=tmp_path)) == 10 and len(calls) == 12  # the folder changed

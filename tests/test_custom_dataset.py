"""A user's own dataset without code: a folder-per-class tree or a CSV of (file, labels), single- or multi-label."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from playitback.config import load_config
from playitback.data.annotations import AnnotationError, read_annotations, records_from_folders, split_records
from playitback.data.build import build_dataset, load_split_records

REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path, classes: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name / "sub").mkdir(parents=True)
        for i in range(count):
            folder = root / name / ("sub" if i % 2 else "")
            sf.write(folder / f"{name}_{i}.wav", rng.standard_normal(8000).astype(np.float32) * 0.1, 16000)
    (root / "dog" / "notes.txt").write_text("not audio")
    return root


def test_folders_to_lists_to_dataset(tmp_path: Path) -> None:
    audio = _tree(tmp_path / "audio", {"cat": 5, "dog": 4, "owl": 3})
    records = records_from_folders(audio)
    assert len(records) == 12
    assert {r.label_names[0]: r.labels[0] for r in records} == {"cat": 0, "dog": 1, "owl": 2}
    train, test = split_records(records, 0.25, seed=0)
    assert len(train) + len(test) == 12 and {r.labels[0] for r in test} == {0, 1, 2}
    assert split_records(records, 0.25, seed=0) == (train, test)

    lists = tmp_path / "lists"
    result = subprocess.run([sys.executable, str(REPO / "tools/prepare_annotations.py"), "--from-folders", str(audio),
                             "--out-dir", str(lists), "--test-fraction", "0.25"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (lists / "classes.txt").read_text().split("\n")[:3] == ["cat", "dog", "owl"]
    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml", [
        "NUM_GPUS", "0", "TRAIN.DATASET", "custom", "TEST.DATASET", "custom", "MODEL.NUM_CLASSES", "3",
        "CUSTOM.AUDIO_DATA_DIR", str(audio), "CUSTOM.ANNOTATIONS_DIR", str(lists), "AUDIO_DATA.CLIP_SECS", "1.0"])
    dataset = build_dataset(cfg, "train")
    item = dataset[0]
    assert item["playbacks"][0].shape == (64, 128)
    assert int(item["label"]) == dataset.records[0].labels[0]
    assert len(build_dataset(cfg, "test")) == len(test)


def test_csv_of_files_and_labels_multi_label(tmp_path: Path) -> None:
    audio = _tree(tmp_path / "audio", {"cat": 2, "dog": 2})
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "classes.txt").write_text("bark\nmeow\npurr\n")
    (lists / "train.csv").write_text("file,labels\ncat/cat_0.wav,meow;purr\ndog/dog_0.wav,bark\n")
    (lists / "test.csv").write_text("file,labels\ncat/sub/cat_1.wav,purr\ndog/sub/dog_1.wav,bark;meow\n")
    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml", [
        "NUM_GPUS", "0", "TRAIN.DATASET", "custom", "TEST.DATASET", "custom", "MODEL.NUM_CLASSES", "3",
        "DATA.MULTI_LABEL", "True", "MODEL.LOSS_FUNC", "bce_logit", "CUSTOM.AUDIO_DATA_DIR", str(audio),
        "CUSTOM.ANNOTATIONS_DIR", str(lists), "AUDIO_DATA.CLIP_SECS", "1.0"])
    records = load_split_records(cfg, "test")
    assert [r.labels for r in records] == [(2,), (0, 1)]
    item = build_dataset(cfg, "train")[0]
    assert item["label"].tolist() == [0.0, 1.0, 1.0]


def test_custom_errors_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("path,class\na.wav,x\n")
    with pytest.raises(AnnotationError, match="needs a header with the columns file and label"):
        read_annotations(bad, "custom")
    with pytest.raises(AnnotationError, match="no audio files"):
        (tmp_path / "empty" / "cls").mkdir(parents=True)
        records_from_folders(tmp_path / "empty")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.csv").write_text("file,label\na.wav,cat\nb.wav,dog\nc.wav,owl\n")
    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml", [
        "NUM_GPUS", "0", "TRAIN.DATASET", "custom", "TEST.DATASET", "custom", "MODEL.NUM_CLASSES", "2",
        "CUSTOM.AUDIO_DATA_DIR", str(tmp_path), "CUSTOM.ANNOTATIONS_DIR", str(lists)])
    with pytest.raises(ValueError, match="outside the model's classes"):
        load_split_records(cfg, "train")

"""The reproducibility kit: which listed clips have their audio, the clip lists and the per-class table (the end-to-end
run of tests/test_engine.py checks what a real test run writes)."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import average_precision_score

from playitback.data.audio_io import FileAudioReader, Hdf5AudioReader
from playitback.data.labels import LabelSpace
from playitback.data.records import ClipRecord
from playitback.engine.reproducibility import (
    audio_coverage,
    write_clip_ids,
    write_per_class_csv,
)


def _records(*sources: str) -> list[ClipRecord]:
    return [ClipRecord(uid=f"uid_{s}", source=s, labels=(0,)) for s in sources]


def test_coverage_counts_the_listed_clips_whose_audio_exists(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", np.zeros(160, dtype=np.float32), 16000)
    records = _records("a", "b", "gone")
    present = [FileAudioReader(tmp_path, ".wav", 16000).has_audio(record) for record in records]
    assert present == [True, True, False]
    with caplog.at_level(logging.INFO):
        coverage = audio_coverage(len(records), sum(present), "eval.csv")
    assert coverage == {"clips_listed": 3, "clips_present": 2}
    assert "test list eval.csv: 2 of its 3 clips have their audio (66.67%)" in caplog.text
    assert "1 clip(s) of the test list are missing" in caplog.text
    with h5py.File(tmp_path / "epic.hdf5", "w") as handle:
        handle.create_dataset("P01_01", data=np.zeros(160, dtype=np.int16)).attrs["sample_rate"] = 16000
    hdf5 = Hdf5AudioReader(tmp_path / "epic.hdf5", 16000)
    assert [hdf5.has_audio(record) for record in _records("P01_01", "P01_02")] == [True, False]


def test_clip_lists_and_the_per_class_table_of_two_heads(tmp_path: Path) -> None:
    records = [ClipRecord(uid="P01_01_0", source="P01_01", labels=(1, 0), label_names=("take", "cup")),
               ClipRecord(uid="P01_01_1", source="P01_01", labels=(0, 1), label_names=("open", "door"))]
    assert write_clip_ids(tmp_path, "test", records).read_text() == "P01_01_0\nP01_01_1\n"
    space = LabelSpace((3, 2), task_names=("verb", "noun")).named_from(records)
    assert space.class_names == (("open", "take", "2"), ("cup", "door"))
    rng = np.random.default_rng(0)
    labels = np.stack([rng.integers(0, 2, 40), rng.integers(0, 2, 40)], axis=1)  # verb class 2 never occurs
    scores = rng.normal(size=(40, 5))
    path = write_per_class_csv(tmp_path / "per_class.csv", scores, labels, space)
    rows = list(csv.DictReader(path.open()))
    assert [(r["task"], r["class_id"], r["class_name"]) for r in rows] == [
        ("verb", "0", "open"), ("verb", "1", "take"), ("verb", "2", "2"), ("noun", "0", "cup"), ("noun", "1", "door")]
    assert rows[2]["positives"] == "0" and rows[2]["AP"] == ""
    assert float(rows[4]["AP"]) == pytest.approx(100 * average_precision_score(labels[:, 1] == 1, scores[:, 4]),
                                                 abs=1e-4)

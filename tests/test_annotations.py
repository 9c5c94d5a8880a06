"""Annotation readers, the safe pickle loader and the converter tool."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from playitback.data.annotations import (
    AnnotationError,
    class_index_from_records,
    class_names_from_records,
    read_annotations,
    relabel_records,
    write_records_csv,
)
from playitback.data.records import ClipRecord
from playitback.data.safe_pickle import UnsafePickleError, load_dataframe_pickle

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vgg_pickle_records(shared_data: Path) -> list[ClipRecord]:
    return read_annotations(shared_data / "VGG-Sound" / "test.pkl", "vggsound")


@pytest.fixture(scope="module")
def epic_pickle_records(shared_data: Path) -> list[ClipRecord]:
    return read_annotations(shared_data / "EPIC-KITCHENS" / "EPIC_100_validation.pkl", "epickitchens")


# ---- real files -------------------------------------------------------------------------------------------------


def test_vggsound_pickle(vgg_pickle_records: list[ClipRecord]) -> None:
    records = vgg_pickle_records
    assert len(records) == 15446
    assert len({r.labels[0] for r in records}) == 309
    assert {r.labels[0] for r in records} == set(range(309))
    # Rows 0-2 as documented for the original pickle: the ids are the pickle's, not alphabetical.
    assert records[0] == ClipRecord(
        uid="glLQrEijrKg_000300",
        source="playing hammond organ/glLQrEijrKg_000300",
        labels=(47,),
        label_names=("playing hammond organ",),
    )
    assert (records[1].uid, records[1].labels) == ("LDoXsip0BEQ_000177", (163,))
    assert (records[2].label_names, records[2].labels) == (("basketball bounce",), (1,))
    assert all(len(r.labels) == 1 and r.stop_s is None for r in records)


def test_vggsound_csv_matches_pickle(shared_data: Path, vgg_pickle_records: list[ClipRecord]) -> None:
    path = shared_data / "VGG-Sound" / "test.csv"
    index = class_index_from_records(vgg_pickle_records)
    assert len(index) == 309
    assert read_annotations(path, "vggsound", class_index=index) == vgg_pickle_records
    # Without the pickle's mapping, ids are the sorted class names: same rows, different ids.
    by_name = read_annotations(path, "vggsound")
    names = sorted(index)
    assert [(r.uid, r.source) for r in by_name] == [(r.uid, r.source) for r in vgg_pickle_records]
    assert all(r.labels == (names.index(r.label_names[0]),) for r in by_name[:200])


def test_audioset_pickle(shared_data: Path) -> None:
    records = read_annotations(shared_data / "AudioSet" / "test.pkl", "audioset")
    assert len(records) == 20371
    ids = {label for r in records for label in r.labels}
    assert ids == set(range(527))  # 0-based as stored: no -1 shift (B18)
    assert records[0].uid == "--4gqARaEJE_0_10" and records[0].source == "--4gqARaEJE_0_10"
    assert records[0].labels == (73, 361, 74, 72)
    assert records[0].label_names == ("Domestic animals, pets", "Squeak", "Dog", "Animal")
    assert records[1].labels == (419,) and records[2].labels == (47,)
    names = class_names_from_records(records, 527)
    assert names[0] == "Speech" and names[526] == "Field recording"
    mean_labels = sum(len(r.labels) for r in records) / len(records)
    assert 2.5 < mean_labels < 2.6


def test_epic_pickle_and_csv(shared_data: Path, epic_pickle_records: list[ClipRecord]) -> None:
    records = epic_pickle_records
    assert len(records) == 9668
    by_uid = {r.uid: r for r in records}
    assert by_uid["P01_11_0"] == ClipRecord(
        uid="P01_11_0", source="P01_11", labels=(0, 2), start_s=0.0, stop_s=1.89, label_names=("take", "plate")
    )
    assert (by_uid["P01_11_10"].start_s, by_uid["P01_11_10"].stop_s) == (49.15, 50.95)
    assert by_uid["P01_11_10"].labels == (0, 49)
    assert max(r.labels[0] for r in records) <= 96 and max(r.labels[1] for r in records) <= 299
    assert len({r.source for r in records}) == 138
    durations = sorted(r.stop_s - r.start_s for r in records)
    assert min(durations) == pytest.approx(0.5) and max(durations) == pytest.approx(146.98)
    csv_records = read_annotations(shared_data / "EPIC-KITCHENS" / "EPIC_100_validation.csv", "epickitchens")
    assert csv_records == records


# ---- official CSV forms (small files written here) ---------------------------------------------------------------


def test_vggsound_official_csv_split_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "vggsound.csv"
    path.write_text(
        "---g-f_I2yQ,1,people marching,test\n"
        "--0PQM4-hqg,30,\"waterfall burbling, rushing\",train\n"
        "--56QUhyDQM,185,playing tennis,train\n"
        "--5OkAjCI7g,40,people marching,train\n"
    )
    train = read_annotations(path, "vggsound", split="train")
    test = read_annotations(path, "vggsound", split="test")
    # Ids are the sorted names of the whole file, so the two splits agree.
    assert [(r.uid, r.labels) for r in train] == [("--0PQM4-hqg_000030", (2,)), ("--56QUhyDQM_000185", (1,)),
                                                   ("--5OkAjCI7g_000040", (0,))]
    assert test == [
        ClipRecord("---g-f_I2yQ_000001", "people marching/---g-f_I2yQ_000001", (0,), label_names=("people marching",))
    ]
    assert len(read_annotations(path, "vggsound")) == 4
    with pytest.raises(AnnotationError, match="no rows of split 'val'.*splits present: test, train"):
        read_annotations(path, "vggsound", split="val")
    given = read_annotations(path, "vggsound", class_index={"people marching": 7, "waterfall burbling, rushing": 3,
                                                             "playing tennis": 5})
    assert [r.labels for r in given] == [(7,), (3,), (5,), (7,)]


def test_vggsound_two_column_csv_strips_any_extension(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("a.b_000001.webm,dog barking\nc_000002.mp4,cat purring\nd_000003,dog barking\n")
    records = read_annotations(path, "vggsound")
    assert [r.uid for r in records] == ["a.b_000001", "c_000002", "d_000003"]  # B39: splitext, not [:-4]
    assert [r.labels for r in records] == [(1,), (0,), (1,)]


def test_audioset_segments_csv(tmp_path: Path) -> None:
    (tmp_path / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n2,/m/0jbk,"Animal"\n'
    )
    segments = tmp_path / "eval_segments.csv"
    segments.write_text(
        "# Segments csv created Sun Mar  5 10:54:25 2017\n"
        "# num_ytids=2, num_segs=2, num_positive_labels=3\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--4gqARaEJE, 0.000, 10.000, "/m/0jbk,/m/09x0r"\n'
        '-0RWZT-miFs, 420.000, 430.000, "/m/05zppz"\n'
    )
    records = read_annotations(segments, "audioset")
    assert records == [
        ClipRecord("--4gqARaEJE_0_10", "--4gqARaEJE_0_10", (2, 0), label_names=("Animal", "Speech")),
        ClipRecord("-0RWZT-miFs_420_430", "-0RWZT-miFs_420_430", (1,), label_names=("Male speech, man speaking",)),
    ]
    moved = tmp_path / "elsewhere" / "eval_segments.csv"
    moved.parent.mkdir()
    moved.write_text(segments.read_text())
    with pytest.raises(AnnotationError, match="class_labels_indices.csv, not found.*pass class_labels_csv"):
        read_annotations(moved, "audioset")
    assert read_annotations(moved, "audioset", class_labels_csv=tmp_path / "class_labels_indices.csv") == records
    bad = tmp_path / "bad_segments.csv"
    bad.write_text('abc, 0.000, 10.000, "/m/nope"\n')
    with pytest.raises(AnnotationError, match="label '/m/nope' of abc is not in"):
        read_annotations(bad, "audioset", class_labels_csv=tmp_path / "class_labels_indices.csv")


def test_epic_millisecond_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "EPIC_100_train.csv"
    path.write_text(
        "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,verb,verb_class,noun,noun_class\n"
        "P02_01_3,P02,P02_01,00:01:02.345,01:00:00.5,open,3,fridge,12\n"
    )
    (record,) = read_annotations(path, "epickitchens")
    # The original divided the fraction by 100 always, giving 62.0 + 3.45 for ".345".
    assert (record.start_s, record.stop_s) == (62.345, 3600.5)
    assert record.labels == (3, 12) and record.source == "P02_01"
    path.write_text(path.read_text().replace("00:01:02.345", "1:02.3"))
    with pytest.raises(AnnotationError, match="P02_01_3: timestamp '1:02.3' is not HH:MM:SS.ff"):
        read_annotations(path, "epickitchens")


def test_project_csv_round_trip(tmp_path: Path) -> None:
    records = [
        ClipRecord("a", "dog, barking/a", (3,), label_names=("dog, barking",)),
        ClipRecord("b", "b", (5, 0, 2), label_names=("x", "y", "z")),
        ClipRecord("P01_1", "P01", (1, 2), start_s=0.1 + 0.2, stop_s=7.123456789, label_names=("take", "cup")),
        ClipRecord("c", "c", (4,)),
    ]
    path = tmp_path / "sub" / "records.csv"
    write_records_csv(records, path)
    for dataset in ("vggsound", "audioset", "epickitchens"):
        assert read_annotations(path, dataset) == records
    other_map = {"dog, barking": 0, "x": 1, "y": 2, "z": 3, "take": 4, "cup": 5}
    # Reading checks stored ids against a map; converting to another map is explicit.
    with pytest.raises(AnnotationError, match="class 'dog, barking' has id 3 in this file but 0 in the run's class"):
        read_annotations(path, "vggsound", class_index=other_map)
    remapped = relabel_records(records[:3], other_map)
    assert [r.labels for r in remapped] == [(0,), (1, 2, 3), (4, 5)]
    with pytest.raises(AnnotationError, match="contains ';'"):
        write_records_csv([ClipRecord("a", "a", (0,), label_names=("x;y",))], tmp_path / "bad.csv")


def test_class_index_and_names() -> None:
    records = [
        ClipRecord("a", "a", (2,), label_names=("dog",)),
        ClipRecord("b", "b", (0, 2), label_names=("cat", "dog")),
    ]
    assert class_index_from_records(records) == {"cat": 0, "dog": 2}
    assert class_names_from_records(records, 4) == ["cat", "1", "dog", "3"]
    with pytest.raises(AnnotationError, match="class 'dog' has id 2, outside \\[0, 2\\)"):
        class_names_from_records(records, 2)
    with pytest.raises(AnnotationError, match="class 'dog' has ids 2 and 1"):
        class_index_from_records(records + [ClipRecord("c", "c", (1,), label_names=("dog",))])


# ---- errors ------------------------------------------------------------------------------------------------------


def test_reader_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pkl"
    with pytest.raises(AnnotationError, match=f"{missing}: annotation file not found"):
        read_annotations(missing, "vggsound")
    text = tmp_path / "list.txt"
    text.write_text("a,b\n")
    with pytest.raises(AnnotationError, match="unknown dataset 'kinetics'; use one of vggsound, audioset"):
        read_annotations(text, "kinetics")
    with pytest.raises(AnnotationError, match=f"{text}: unknown annotation format '.txt'"):
        read_annotations(text, "vggsound")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    with pytest.raises(AnnotationError, match=f"{garbage}: not a readable pandas pickle"):
        read_annotations(garbage, "vggsound")
    wrong = tmp_path / "wrong.pkl"
    pd.DataFrame({"video": ["a.mp4"], "label": ["x"]}).to_pickle(wrong)
    expected = f"{wrong}: missing column\\(s\\) class for vggsound \\(found: video, label\\)"
    with pytest.raises(AnnotationError, match=expected):
        read_annotations(wrong, "vggsound")
    with pytest.raises(AnnotationError, match="missing column\\(s\\) classes, class_ids for audioset"):
        read_annotations(wrong, "audioset")
    two_col = tmp_path / "test.csv"
    two_col.write_text("a.mp4,dog\nb.mp4,owl\n")
    with pytest.raises(AnnotationError, match="class 'owl' is not in class_index \\(1 classes\\)"):
        read_annotations(two_col, "vggsound", class_index={"dog": 0})
    with pytest.raises(AnnotationError, match="class_index applies to VGG-Sound and custom lists only"):
        read_annotations(two_col, "audioset", class_index={"dog": 0})
    with pytest.raises(AnnotationError, match="the split option does not apply to this file"):
        read_annotations(two_col, "vggsound", split="train")
    with pytest.raises(AnnotationError, match="not an EPIC-KITCHENS-100 CSV"):
        read_annotations(two_col, "epickitchens")
    with pytest.raises(AnnotationError, match="not an AudioSet segments CSV"):
        read_annotations(two_col, "audioset")
    three_col = tmp_path / "three.csv"
    three_col.write_text("a,b,c\n")
    with pytest.raises(AnnotationError, match="not a VGG-Sound CSV .* found 3"):
        read_annotations(three_col, "vggsound")
    empty = tmp_path / "empty.csv"
    empty.write_text("# only a comment\n")
    with pytest.raises(AnnotationError, match=f"{empty}: the CSV has no data rows"):
        read_annotations(empty, "vggsound")
    malformed = tmp_path / "malformed.csv"
    malformed.write_text("uid,source,labels,start_s,stop_s,label_names\na,a,one,0.0,,x\n")
    with pytest.raises(AnnotationError, match=f"{malformed}: line 2 is malformed"):
        read_annotations(malformed, "vggsound")


# ---- safe pickle loading -----------------------------------------------------------------------------------------


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class _OpensFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


class _Execs:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize(("payload", "target"), [(_RunsCommand, os.system), (_OpensFile, open), (_Execs, exec)])
def test_malicious_pickle_is_refused(tmp_path: Path, payload: type, target: object) -> None:
    marker = tmp_path / "pwned"
    forbidden = f"{target.__module__}.{target.__name__}"  # as pickle records it, e.g. posix.system, io.open
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload(marker)))
    with pytest.raises(UnsafePickleError) as info:
        load_dataframe_pickle(path)
    message = str(info.value)
    assert str(path) in message and f"'{forbidden}'" in message
    assert "tools/prepare_annotations.py" in message and "allow_unsafe=True" in message
    with pytest.raises(AnnotationError, match=f"refusing to unpickle the global '{forbidden}'"):
        read_annotations(path, "vggsound")
    assert not marker.exists()


def test_payload_hidden_in_a_dataframe_cell_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_frame.pkl"
    frame = pd.DataFrame({"video": ["a.mp4"], "class": ["dog"], "class_id": [0]})
    frame["class"] = pd.Series([_RunsCommand(marker)], dtype=object)
    frame.to_pickle(path)
    with pytest.raises(UnsafePickleError, match=f"{os.system.__module__}.system"):
        load_dataframe_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickles_written_by_this_pandas_load(tmp_path: Path, protocol: int) -> None:
    frame = pd.DataFrame(
        {"video": ["a.mp4", "b.mp4"], "class": ["x", "y"], "class_id": [1, 2], "ids": [[1, 2], [3]], "f": [0.5, 1.0]}
    )
    frame["cat"] = frame["class"].astype("category")
    for obj in (frame, frame.set_index("video")):
        path = tmp_path / f"frame{protocol}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        pd.testing.assert_frame_equal(load_dataframe_pickle(path), pd.read_pickle(path))


def test_allow_unsafe_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "series.pkl"
    pd.Series([1, 2]).to_pickle(path)
    with pytest.raises(pickle.UnpicklingError, match="holds a Series, expected a pandas DataFrame"):
        load_dataframe_pickle(path)
    frame = pd.DataFrame({"a": pd.to_datetime(["2020-01-01"])})  # datetimes are outside the allow-list
    frame.to_pickle(path)
    with pytest.raises(UnsafePickleError):
        load_dataframe_pickle(path)
    pd.testing.assert_frame_equal(load_dataframe_pickle(path, allow_unsafe=True), frame)


# ---- converter tool ----------------------------------------------------------------------------------------------


def _run_tool(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "prepare_annotations.py"), *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False,
    )


def test_prepare_annotations_round_trip(
    shared_data: Path, tmp_path: Path, epic_pickle_records: list[ClipRecord]
) -> None:
    out = tmp_path / "epic.csv"
    result = _run_tool(shared_data / "EPIC-KITCHENS" / "EPIC_100_validation.pkl", "--dataset", "epickitchens",
                       "--out", out)
    assert result.returncode == 0, result.stderr
    assert "wrote 9668 records" in result.stdout
    assert read_annotations(out, "epickitchens") == epic_pickle_records
    vgg_out = tmp_path / "vgg.csv"
    assert _run_tool(shared_data / "VGG-Sound" / "test.pkl", "--dataset", "vggsound", "--out", vgg_out).returncode == 0
    converted = read_annotations(vgg_out, "vggsound")
    assert converted == read_annotations(shared_data / "VGG-Sound" / "test.pkl", "vggsound")
    assert Counter(r.labels[0] for r in converted)[47] == Counter(r.label_names[0] for r in converted)[
        "playing hammond organ"]


def test_prepare_annotations_reports_errors(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_RunsCommand(marker)))
    result = _run_tool(evil, "--dataset", "vggsound", "--out", tmp_path / "out.csv")
    assert result.returncode == 2
    assert f"refusing to unpickle the global '{os.system.__module__}.system'" in result.stderr
    assert not marker.exists() and not (tmp_path / "out.csv").exists()

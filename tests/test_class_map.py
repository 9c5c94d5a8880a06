"""One class name -> id map per run (issue 12, item 1): every split of a VGG-Sound or custom run gets its ids from the
classes file, else the train list; a split whose stored ids disagree is an error naming the class and both ids."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from playitback.config import load_config
from playitback.data.annotations import AnnotationError, read_annotations
from playitback.data.build import load_split_records, run_class_index

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "VGG-Sound" / "PlayItBackX2.yaml"
# Ids that are neither alphabetical nor first-appearance order, like the original pickles'.
PICKLE_IDS = {"playing hammond organ": 0, "parrot talking": 1, "basketball bounce": 2}


def _cfg(annotations: Path, *opts: str):
    return load_config(CONFIG, ["NUM_GPUS", "0", "VGGSOUND.ANNOTATIONS_DIR", str(annotations), *opts])


@pytest.fixture()
def lists(tmp_path: Path) -> Path:
    """A pickle with its own ids and the same clips as a two-column CSV (no ids), as the original ships them."""
    rows = [("a_000001.mp4", "playing hammond organ"), ("b_000002.mp4", "parrot talking"),
            ("c_000003.mp4", "basketball bounce"), ("d_000004.mp4", "playing hammond organ")]
    pd.DataFrame({"video": [v for v, _ in rows], "class": [c for _, c in rows],
                  "class_id": [PICKLE_IDS[c] for _, c in rows]}).to_pickle(tmp_path / "train.pkl")
    (tmp_path / "test.csv").write_text("".join(f"{video},{name}\n" for video, name in rows))
    return tmp_path


def test_csv_split_takes_the_ids_of_the_train_pickle(lists: Path) -> None:
    cfg = _cfg(lists, "VGGSOUND.TRAIN_LIST", "train.pkl", "VGGSOUND.VAL_LIST", "test.csv")
    val = load_split_records(cfg, "val")
    assert [r.labels[0] for r in val] == [PICKLE_IDS[r.label_names[0]] for r in val]
    assert [r.labels for r in val] == [r.labels for r in load_split_records(cfg, "train")]
    # Read alone, the CSV gets the sorted names' ids, which differ from the pickle's: what the run map prevents.
    assert [r.labels[0] for r in read_annotations(lists / "test.csv", "vggsound")] == [2, 1, 0, 2]


def test_conflicting_stored_ids_name_the_class_and_both_ids(lists: Path) -> None:
    cfg = _cfg(lists, "VGGSOUND.TRAIN_LIST", "test.csv", "VGGSOUND.VAL_LIST", "train.pkl")
    with pytest.raises(AnnotationError, match="class 'playing hammond organ' has id 0 in this file but 2 in the run's "
                                              "class map") as err:
        load_split_records(cfg, "val")
    assert f"the run's class map comes from the train list {lists / 'test.csv'}" in str(err.value)


def test_classes_file_pins_the_map_for_every_split(lists: Path) -> None:
    (lists / "classes.txt").write_text("parrot talking\nbasketball bounce\nplaying hammond organ\n")
    cfg = _cfg(lists, "VGGSOUND.TRAIN_LIST", "test.csv", "VGGSOUND.TEST_LIST", "test.csv")
    assert run_class_index(cfg, "test").index == {"parrot talking": 0, "basketball bounce": 1,
                                                  "playing hammond organ": 2}
    assert [r.labels[0] for r in load_split_records(cfg, "test")] == [2, 0, 1, 2]
    cfg = _cfg(lists, "VGGSOUND.TRAIN_LIST", "test.csv", "VGGSOUND.VAL_LIST", "train.pkl")
    with pytest.raises(AnnotationError, match="class 'playing hammond organ' has id 0 in this file but 2"):
        load_split_records(cfg, "val")


def test_test_only_list_without_ids_and_no_map_is_refused(lists: Path) -> None:
    cfg = _cfg(lists, "VGGSOUND.TRAIN_LIST", "absent.csv", "VGGSOUND.TEST_LIST", "test.csv")
    with pytest.raises(AnnotationError, match="stores no class ids, and neither VGGSOUND.CLASSES_FILE"):
        load_split_records(cfg, "test")
    # A test list that stores ids is enough on its own.
    cfg = _cfg(lists, "VGGSOUND.TRAIN_LIST", "absent.csv", "VGGSOUND.TEST_LIST", "train.pkl")
    assert [r.labels[0] for r in load_split_records(cfg, "test")] == [0, 1, 2, 0]


def test_converter_writes_the_map_and_converts_lists(lists: Path) -> None:
    tool = [sys.executable, str(REPO / "tools" / "prepare_annotations.py")]
    done = subprocess.run([*tool, str(lists / "train.pkl"), "--dataset", "vggsound", "--classes-out",
                           str(lists / "classes.txt")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (lists / "classes.txt").read_text().splitlines() == ["playing hammond organ", "parrot talking",
                                                                 "basketball bounce"]
    done = subprocess.run([*tool, str(lists / "test.csv"), "--dataset", "vggsound", "--class-map",
                           str(lists / "train.pkl"), "--out", str(lists / "test_ids.csv")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    converted = read_annotations(lists / "test_ids.csv", "vggsound")
    assert [r.labels[0] for r in converted] == [PICKLE_IDS[r.label_names[0]] for r in converted]


def test_converter_holds_out_a_stratified_seeded_validation_list(tmp_path: Path) -> None:
    """The held-out list takes about the fraction of every class (at least one clip of a class with two or more),
    the rest stays for training, nothing is lost or repeated, and the seed fixes the split."""
    rows = [(f"c{k}_{i:06d}.mp4", f"class {k}") for k in range(3) for i in range(10 * (k + 1))]
    (tmp_path / "train.csv").write_text("".join(f"{video},{name}\n" for video, name in rows))
    tool = [sys.executable, str(REPO / "tools" / "prepare_annotations.py"), str(tmp_path / "train.csv"), "--dataset",
            "vggsound", "--holdout-fraction", "0.2", "--seed", "5"]
    for out in ("a", "b"):
        done = subprocess.run([*tool, "--out", str(tmp_path / f"{out}_rest.csv"), "--holdout-out",
                               str(tmp_path / f"{out}_val.csv")], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    rest = read_annotations(tmp_path / "a_rest.csv", "vggsound")
    val = read_annotations(tmp_path / "a_val.csv", "vggsound")
    assert sorted(r.uid for r in rest + val) == sorted(video[:-4] for video, _ in rows)
    assert [sum(r.labels[0] == k for r in val) for k in range(3)] == [2, 4, 6]
    assert (tmp_path / "b_val.csv").read_text() == (tmp_path / "a_val.csv").read_text()


def test_holdout_leaves_every_class_a_training_clip() -> None:
    """A class with few clips is never held out whole, whatever the fraction: the train list must still name it, or
    the run's class map (taken from the train list) would lose it."""
    from playitback.data.annotations import split_records
    from playitback.data.records import ClipRecord

    records = [ClipRecord(uid=f"c{k}_{i}", source=f"c{k}_{i}", labels=(k,), label_names=(f"class {k}",))
               for k, size in enumerate((1, 2, 3, 10)) for i in range(size)]
    kept, held_out = split_records(records, 0.8, seed=3)
    assert [sum(r.labels[0] == k for r in kept) for k in range(4)] == [1, 1, 1, 2]
    assert [sum(r.labels[0] == k for r in held_out) for k in range(4)] == [0, 1, 2, 8]


def test_real_vggsound_files_one_map(shared_data: Path) -> None:
    """The original test.csv read alone agrees with test.pkl's ids on 50 of 15,446 clips; with the pickle as the train
    list every clip agrees, and the reverse pairing is refused naming "playing hammond organ" (47 vs 203)."""
    folder = shared_data / "VGG-Sound"
    pickle_records = read_annotations(folder / "test.pkl", "vggsound")
    alone = read_annotations(folder / "test.csv", "vggsound")
    assert sum(a.labels == b.labels for a, b in zip(pickle_records, alone, strict=True)) == 50
    cfg = _cfg(folder, "VGGSOUND.TRAIN_LIST", "test.pkl", "VGGSOUND.VAL_LIST", "test.csv")
    val = load_split_records(cfg, "val")
    assert [r.labels for r in val] == [r.labels for r in pickle_records]
    cfg = _cfg(folder, "VGGSOUND.TRAIN_LIST", "test.csv", "VGGSOUND.VAL_LIST", "test.pkl")
    with pytest.raises(AnnotationError, match="class 'playing hammond organ' has id 47 in this file but 203"):
        load_split_records(cfg, "val")

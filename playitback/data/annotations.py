"""Annotation readers: every supported annotation file becomes a list of :class:`ClipRecord`.

Supported inputs (recognised by extension and content):

* the pickled DataFrames of the original PlayItBack (``test.pkl``, ``EPIC_100_validation.pkl``, ...), loaded through
  :func:`~playitback.data.safe_pickle.load_dataframe_pickle`, which refuses pickles that could run code;
* the project's own CSV (header ``uid,source,labels,start_s,stop_s,label_names``), written by
  :func:`write_records_csv` and by ``tools/prepare_annotations.py``;
* the official CSVs: VGG-Sound ``vggsound.csv`` (and the original's two-column ``test.csv``), AudioSet
  ``*_segments.csv`` with ``class_labels_indices.csv``, EPIC-KITCHENS-100 ``EPIC_100_*.csv``;
* a user's own dataset ("custom"): a CSV with a header holding ``file`` (audio path relative to the audio root, with
  its extension) and ``label`` or ``labels`` (class names, several joined with ``;`` for multi-label), or a
  folder-per-class tree turned into project CSVs by :func:`records_from_folders` / ``tools/prepare_annotations.py
  --from-folders``.

Class ids. VGG-Sound pickles and project CSVs carry their own ids (the pickles' are neither alphabetical nor
first-appearance order); VGG-Sound CSVs without ids and custom lists take them from ``class_index`` when given, else
from the sorted class names of that one file. Reading a file that carries ids with a ``class_index`` checks them
against it and fails on a conflict, naming the class and both ids: one run needs one name -> id map for every split
(``playitback.data.build.run_class_index`` builds it). :func:`relabel_records` converts records to another map on
purpose (``tools/prepare_annotations.py --class-map``). AudioSet ids are the 0-based rows of
``class_labels_indices.csv``, used unchanged.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pandas as pd

from playitback.data.audio_io import AUDIO_EXTENSIONS
from playitback.data.records import ClipRecord
from playitback.data.safe_pickle import UnsafePickleError, load_dataframe_pickle
from playitback.utils.errors import UserError

__all__ = [
    "AnnotationError",
    "DATASETS",
    "PROJECT_CSV_COLUMNS",
    "class_index_from_records",
    "class_names_from_records",
    "read_annotations",
    "read_class_list",
    "records_carry_ids",
    "records_from_folders",
    "relabel_records",
    "split_records",
    "write_records_csv",
]

DATASETS = ("vggsound", "audioset", "epickitchens", "custom")
PROJECT_CSV_COLUMNS = ("uid", "source", "labels", "start_s", "stop_s", "label_names")
_LIST_SEPARATOR = ";"
_PICKLE_SUFFIXES = (".pkl", ".pickle")
_EPIC_COLUMNS = ("video_id", "start_timestamp", "stop_timestamp", "verb", "verb_class", "noun", "noun_class")


class AnnotationError(UserError, ValueError):
    """An annotation file cannot be turned into clip records; the message names the file, the problem and the fix."""


def read_annotations(
    path: str | Path,
    dataset: str,
    *,
    class_index: Mapping[str, int] | None = None,
    split: str | None = None,
    class_labels_csv: str | Path | None = None,
    allow_unsafe_pickle: bool = False,
) -> list[ClipRecord]:
    """Read an annotation file of ``dataset`` into clip records.

    Args:
        path: A pickled DataFrame (``.pkl``/``.pickle``) or a CSV (project, or the dataset's official form).
        dataset: ``"vggsound"``, ``"audioset"`` or ``"epickitchens"``.
        class_index: VGG-Sound and custom lists only: class name -> id. Files without ids (two-column and official
            VGG-Sound CSVs, custom CSVs) take their ids from it; files with ids (pickles, project CSVs) are checked
            against it.
        split: ``vggsound.csv`` only: keep the rows of this split (``"train"`` or ``"test"``).
        class_labels_csv: AudioSet segment CSVs only: the ``class_labels_indices.csv`` that maps mids to ids; looked up
            next to ``path`` when not given.
        allow_unsafe_pickle: Load pickles with plain ``pandas.read_pickle``; only for files you trust.

    Returns:
        One record per clip (VGG-Sound, AudioSet) or per action (EPIC-KITCHENS), in file order.

    Raises:
        AnnotationError: Missing file, unknown dataset, unreadable or unknown format, missing columns, a class name
            missing from ``class_index``, a stored id that conflicts with ``class_index``, or an option that does not
            apply to this file.
    """
    path = Path(path)
    if dataset not in DATASETS:
        raise AnnotationError(f"{path}: unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found; check the path (and the *.ANNOTATIONS_DIR key)")
    if class_index is not None and dataset not in ("vggsound", "custom"):
        raise AnnotationError(
            f"{path}: class_index applies to VGG-Sound and custom lists only; {dataset} files carry their own ids, "
            "drop the argument"
        )
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        frame = _load_pickle(path, allow_unsafe_pickle)
        _reject_option(path, "split", split, "pickles hold one split each; pick the file of that split")
        _reject_option(path, "class_labels_csv", class_labels_csv, "pickles carry their class ids")
        return _records_from_frame(path, frame, dataset, class_index)
    if suffix == ".csv":
        return _read_csv(path, dataset, class_index, split, class_labels_csv)
    raise AnnotationError(
        f"{path}: unknown annotation format {suffix or '(no extension)'!r}; give a .pkl/.pickle DataFrame or a .csv"
    )


def write_records_csv(records: Iterable[ClipRecord], path: str | Path) -> None:
    """Write records in the project CSV form (read back by :func:`read_annotations` for any dataset).

    Labels and label names are joined with ``";"``; an open-ended segment has an empty ``stop_s``. Floats are written
    with ``repr`` so that reading gives back the identical value.

    Args:
        records: The records to write.
        path: Output CSV; its folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(PROJECT_CSV_COLUMNS)
        for record in records:
            for name in record.label_names:
                if _LIST_SEPARATOR in name:
                    raise AnnotationError(
                        f"{path}: label name {name!r} of clip {record.uid!r} contains {_LIST_SEPARATOR!r}, the list "
                        "separator of the project CSV; rename the class"
                    )
            writer.writerow(
                (
                    record.uid,
                    record.source,
                    _LIST_SEPARATOR.join(str(label) for label in record.labels),
                    repr(float(record.start_s)),
                    "" if record.stop_s is None else repr(float(record.stop_s)),
                    _LIST_SEPARATOR.join(record.label_names),
                )
            )


def class_index_from_records(records: Iterable[ClipRecord]) -> dict[str, int]:
    """The class name -> id mapping that ``records`` use (pass it as ``class_index`` when reading CSVs).

    Meant for VGG-Sound and AudioSet records, whose label names and ids share one class space.

    Args:
        records: Records with ``label_names``.

    Returns:
        ``{name: id}`` sorted by id.

    Raises:
        AnnotationError: A name appears with two different ids.
    """
    index: dict[str, int] = {}
    for record in records:
        for name, label in zip(record.label_names, record.labels, strict=False):
            if index.setdefault(name, label) != label:
                raise AnnotationError(
                    f"class {name!r} has ids {index[name]} and {label} (clip {record.uid!r}); the records mix two "
                    "class mappings, read them from one annotation source"
                )
    return dict(sorted(index.items(), key=lambda item: item[1]))


def class_names_from_records(records: Iterable[ClipRecord], num_classes: int) -> list[str]:
    """Names of classes ``0 .. num_classes - 1`` as the records give them.

    Classes that never occur in ``records`` are named by their id (``"17"``), so the list always has
    ``num_classes`` entries.

    Args:
        records: VGG-Sound or AudioSet records with ``label_names``.
        num_classes: Size of the class space.

    Returns:
        ``names[i]`` is the name of class ``i``.

    Raises:
        AnnotationError: A record's id is outside ``[0, num_classes)``, or a name has two ids.
    """
    names = [str(i) for i in range(num_classes)]
    for name, label in class_index_from_records(records).items():
        if not 0 <= label < num_classes:
            raise AnnotationError(
                f"class {name!r} has id {label}, outside [0, {num_classes}); set the number of classes to at least "
                f"{label + 1}"
            )
        names[label] = name
    return names


def _reject_option(path: Path, name: str, value: object, why: str) -> None:
    if value is not None:
        raise AnnotationError(f"{path}: the {name} option does not apply to this file ({why}); drop it")


def _load_pickle(path: Path, allow_unsafe: bool) -> pd.DataFrame:
    try:
        return load_dataframe_pickle(path, allow_unsafe=allow_unsafe)
    except UnsafePickleError as err:
        raise AnnotationError(str(err)) from err
    except pickle.UnpicklingError as err:
        raise AnnotationError(
            f"{err}; regenerate the file or convert it to CSV with tools/prepare_annotations.py"
        ) from err


def _require_columns(path: Path, frame: pd.DataFrame, columns: Sequence[str], dataset: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise AnnotationError(
            f"{path}: missing column(s) {', '.join(missing)} for {dataset} "
            f"(found: {', '.join(map(str, frame.columns))});"
            f" check that this is a {dataset} annotation file and that the dataset argument is right"
        )


def _stem(video: str) -> str:
    """File name without its extension (``.mp4``, ``.wav``, ... of any length)."""
    return os.path.splitext(str(video))[0]


def _records_from_frame(
    path: Path, frame: pd.DataFrame, dataset: str, class_index: Mapping[str, int] | None
) -> list[ClipRecord]:
    """Records from a DataFrame in the original pickles' schema (also used for the CSV twins)."""
    if dataset == "vggsound":
        _require_columns(path, frame, ("video", "class"), dataset)
        names = [str(name) for name in frame["class"]]
        if "class_id" in frame.columns:
            ids = [int(i) for i in frame["class_id"]]
            if class_index is not None:
                _check_stored_ids(path, zip(names, ids), class_index)
        else:
            ids = _lookup_ids(path, names, class_index or {name: i for i, name in enumerate(sorted(set(names)))})
        return [
            ClipRecord(uid=_stem(video), source=f"{name}/{_stem(video)}", labels=(label,), label_names=(name,))
            for video, name, label in zip(frame["video"], names, ids, strict=True)
        ]
    if dataset == "audioset":
        _require_columns(path, frame, ("video", "classes", "class_ids"), dataset)
        return [
            ClipRecord(
                uid=_stem(video),
                source=_stem(video),
                labels=tuple(int(i) for i in ids),
                label_names=tuple(str(name) for name in names),
            )
            for video, names, ids in zip(frame["video"], frame["classes"], frame["class_ids"], strict=True)
        ]
    if "narration_id" in frame.columns:
        frame = frame.set_index("narration_id")
    _require_columns(path, frame, _EPIC_COLUMNS, dataset)
    return [
        ClipRecord(
            uid=str(uid),
            source=str(video),
            labels=(int(verb_class), int(noun_class)),
            start_s=_timestamp_seconds(path, uid, start),
            stop_s=_timestamp_seconds(path, uid, stop),
            label_names=(str(verb), str(noun)),
        )
        for uid, video, start, stop, verb, verb_class, noun, noun_class in zip(
            frame.index, *(frame[column] for column in _EPIC_COLUMNS), strict=True
        )
    ]


def _lookup_ids(path: Path, names: Sequence[str], class_index: Mapping[str, int]) -> list[int]:
    try:
        return [int(class_index[name]) for name in names]
    except KeyError as err:
        raise AnnotationError(
            f"{path}: class {err.args[0]!r} is not in class_index ({len(class_index)} classes); pass the mapping of "
            "the whole dataset (e.g. class_index_from_records of the training pickle)"
        ) from None


def _check_stored_ids(path: Path, pairs: Iterable[tuple[str, int]], class_index: Mapping[str, int]) -> None:
    """Fail on the first stored (name, id) that conflicts with ``class_index``: the name has another id there, or the
    id belongs to another name there. A name the map lacks keeps its stored id."""
    names_by_id = {label: name for name, label in class_index.items()}
    for name, label in pairs:
        if class_index.get(name, label) != label:
            raise AnnotationError(
                f"{path}: class {name!r} has id {label} in this file but {class_index[name]} in the run's class map; "
                "every split of a run must use one name -> id map: convert the file with tools/prepare_annotations.py "
                "--class-map, or pin the map with a classes file"
            )
        if name not in class_index and label in names_by_id:
            raise AnnotationError(
                f"{path}: class {name!r} has id {label} in this file, the id of {names_by_id[label]!r} in the run's "
                "class map; every split of a run must use one name -> id map: convert the file with "
                "tools/prepare_annotations.py --class-map, or pin the map with a classes file"
            )


def _timestamp_seconds(path: Path, uid: object, stamp: object) -> float:
    """``HH:MM:SS.ff`` or ``HH:MM:SS.fff`` -> seconds; the fraction is read as a decimal (fixes the original's /100)."""
    try:
        hours, minutes, seconds = str(stamp).split(":")
        return float(Decimal(hours) * 3600 + Decimal(minutes) * 60 + Decimal(seconds))
    except (ValueError, InvalidOperation):
        raise AnnotationError(
            f"{path}: action {uid}: timestamp {stamp!r} is not HH:MM:SS.ff; fix the row or regenerate the file"
        ) from None


def _first_data_line(path: Path) -> str:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip() and not line.startswith("#"):
                return line
    raise AnnotationError(f"{path}: the CSV has no data rows; check the file")


def _read_csv(
    path: Path,
    dataset: str,
    class_index: Mapping[str, int] | None,
    split: str | None,
    class_labels_csv: str | Path | None,
) -> list[ClipRecord]:
    first = next(csv.reader([_first_data_line(path)], skipinitialspace=True))
    if tuple(cell.strip() for cell in first) == PROJECT_CSV_COLUMNS:
        _reject_option(path, "split", split, "project CSVs hold one split each")
        _reject_option(path, "class_labels_csv", class_labels_csv, "project CSVs carry their class ids")
        return _read_project_csv(path, class_index)
    if dataset == "custom":
        _reject_option(path, "split", split, "custom lists hold one split each")
        _reject_option(path, "class_labels_csv", class_labels_csv, "it is an AudioSet option")
        return _read_custom_csv(path, [cell.strip() for cell in first], class_index)
    if dataset == "epickitchens":
        if first[0].strip() != "narration_id":
            raise AnnotationError(
                f"{path}: not an EPIC-KITCHENS-100 CSV (the header must start with narration_id) nor a project CSV; "
                "give an EPIC_100_*.csv or a file written by tools/prepare_annotations.py"
            )
        _reject_option(path, "split", split, "EPIC-KITCHENS CSVs hold one split each")
        _reject_option(path, "class_labels_csv", class_labels_csv, "EPIC-KITCHENS rows carry verb/noun ids")
        frame = _read_frame(path, header=0)
        return _records_from_frame(path, frame, dataset, None)
    if dataset == "audioset":
        if len(first) != 4:
            raise AnnotationError(
                f"{path}: not an AudioSet segments CSV (rows must be YTID, start, end, \"mid,...\"; found {len(first)} "
                "columns) nor a project CSV; give eval_segments.csv / *_train_segments.csv"
            )
        _reject_option(path, "split", split, "AudioSet segment files hold one split each")
        return _read_audioset_segments(path, class_labels_csv)
    _reject_option(path, "class_labels_csv", class_labels_csv, "it is an AudioSet option")
    if len(first) == 4:
        frame = _read_frame(path, header=None, names=["youtube_id", "start_seconds", "class", "split"])
        # Ids come from all rows, before the split filter, so train and test files of one CSV agree.
        if class_index is None:
            class_index = {name: i for i, name in enumerate(sorted(set(map(str, frame["class"]))))}
        if split is not None:
            if split not in set(frame["split"]):
                raise AnnotationError(
                    f"{path}: no rows of split {split!r} (splits present: {', '.join(sorted(set(frame['split'])))}); "
                    "use one of those"
                )
            frame = frame[frame["split"] == split]
        videos = [f"{vid}_{int(float(start)):06d}" for vid, start in zip(frame["youtube_id"], frame["start_seconds"])]
        frame = pd.DataFrame({"video": videos, "class": frame["class"].to_numpy()})
    elif len(first) == 2:
        _reject_option(path, "split", split, "a two-column video,class CSV has no split column")
        frame = _read_frame(path, header=None, names=["video", "class"])
    else:
        raise AnnotationError(
            f"{path}: not a VGG-Sound CSV (expected 4 columns youtube_id,start,label,split or 2 columns video,class; "
            f"found {len(first)}) nor a project CSV"
        )
    return _records_from_frame(path, frame, dataset, class_index)


def _read_frame(path: Path, **kwargs: object) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path}: unreadable CSV ({err}); check the file") from err


def _read_project_csv(path: Path, class_index: Mapping[str, int] | None) -> list[ClipRecord]:
    records = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        for line, row in enumerate(reader, start=2):
            try:
                names = tuple(row["label_names"].split(_LIST_SEPARATOR)) if row["label_names"] else ()
                labels = tuple(int(label) for label in row["labels"].split(_LIST_SEPARATOR)) if row["labels"] else ()
                if class_index is not None:
                    _check_stored_ids(path, zip(names, labels), class_index)
                records.append(
                    ClipRecord(
                        uid=row["uid"],
                        source=row["source"],
                        labels=labels,
                        start_s=float(row["start_s"]),
                        stop_s=float(row["stop_s"]) if row["stop_s"] else None,
                        label_names=names,
                    )
                )
            except AnnotationError:
                raise
            except (TypeError, ValueError, AttributeError) as err:
                raise AnnotationError(f"{path}: line {line} is malformed ({err}); fix or regenerate the file") from None
    return records


def _read_audioset_segments(path: Path, class_labels_csv: str | Path | None) -> list[ClipRecord]:
    labels_path = Path(class_labels_csv) if class_labels_csv is not None else path.with_name("class_labels_indices.csv")
    if not labels_path.is_file():
        raise AnnotationError(
            f"{path}: AudioSet segments need class_labels_indices.csv, not found at {labels_path}; put it next to the "
            "segments file or pass class_labels_csv"
        )
    labels_frame = _read_frame(labels_path, header=0)
    _require_columns(labels_path, labels_frame, ("index", "mid", "display_name"), "audioset")
    mid_to_id = {mid: int(index) for index, mid in zip(labels_frame["index"], labels_frame["mid"], strict=True)}
    id_to_name = dict(zip(mid_to_id.values(), labels_frame["display_name"], strict=True))
    records = []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader((line for line in handle if not line.startswith("#")), skipinitialspace=True)
        for row in rows:
            if not row:
                continue
            try:
                ytid, start, end, mids = row
                ids = tuple(mid_to_id[mid] for mid in mids.split(","))
                stem = f"{ytid}_{int(float(start))}_{int(float(end))}"
            except ValueError:
                raise AnnotationError(f"{path}: malformed segment row {row}; fix or regenerate the file") from None
            except KeyError as err:
                raise AnnotationError(
                    f"{path}: label {err.args[0]!r} of {ytid} is not in {labels_path}; use the "
                    "class_labels_indices.csv of the same AudioSet release"
                ) from None
            records.append(
                ClipRecord(uid=stem, source=stem, labels=ids, label_names=tuple(id_to_name[i] for i in ids))
            )
    return records


def _read_custom_csv(path: Path, header: Sequence[str], class_index: Mapping[str, int] | None) -> list[ClipRecord]:
    label_column = "labels" if "labels" in header else "label"
    if "file" not in header or label_column not in header:
        raise AnnotationError(
            f"{path}: a custom list needs a header with the columns file and label (or labels), found {list(header)}; "
            "or write a project CSV with tools/prepare_annotations.py"
        )
    frame = _read_frame(path, header=0)
    names_per_row = [tuple(n.strip() for n in cell.split(_LIST_SEPARATOR) if n.strip()) for cell in frame[label_column]]
    if class_index is None:
        class_index = {name: i for i, name in enumerate(sorted({n for names in names_per_row for n in names}))}
    records = []
    for file, names in zip(frame["file"], names_per_row):
        if not names:
            raise AnnotationError(f"{path}: {file} has no label; every row needs at least one class name")
        records.append(ClipRecord(uid=os.path.splitext(file)[0], source=file,
                                  labels=tuple(_lookup_ids(path, names, class_index)), label_names=names))
    return records


def records_carry_ids(path: str | Path) -> bool:
    """Whether an annotation file stores class ids (pickles with ``class_id`` and project CSVs do; two-column and
    official VGG-Sound CSVs and custom lists do not, so their ids depend on a class map)."""
    path = Path(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return True
    first = next(csv.reader([_first_data_line(path)], skipinitialspace=True))
    return tuple(cell.strip() for cell in first) == PROJECT_CSV_COLUMNS


def relabel_records(records: Iterable[ClipRecord], class_index: Mapping[str, int]) -> list[ClipRecord]:
    """The records with their ids replaced by ``class_index[name]`` (a deliberate conversion to another id map).

    Raises:
        AnnotationError: A record has no label names, or a name missing from ``class_index``.
    """
    out = []
    for record in records:
        if len(record.label_names) != len(record.labels) or not record.labels:
            raise AnnotationError(f"clip {record.uid!r} has no class names, so its ids cannot be converted")
        try:
            labels = tuple(int(class_index[name]) for name in record.label_names)
        except KeyError as err:
            raise AnnotationError(
                f"class {err.args[0]!r} of clip {record.uid!r} is not in the class map ({len(class_index)} classes); "
                "give the map of the whole dataset"
            ) from None
        out.append(dataclasses.replace(record, labels=labels))
    return out


def read_class_list(path: str | Path) -> dict[str, int]:
    """A class list (one name per line, line number = id) as name -> id."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: class list not found; write one class name per line (line number = id)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise AnnotationError(f"{path}: the class list repeats a name; every class must appear once")
    return {name: index for index, name in enumerate(names)}


def records_from_folders(root: str | Path, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[ClipRecord]:
    """A folder-per-class tree (``root/<class name>/**/<file>``) as records with sorted class names as ids; sources
    are paths relative to ``root`` with their extension (read them with an audio extension of "")."""
    root = Path(root)
    if not root.is_dir():
        raise AnnotationError(f"{root}: folder not found; give the folder holding one sub-folder per class")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    records = []
    for class_id, name in enumerate(classes):
        for file in sorted((root / name).rglob("*")):
            if file.is_file() and file.suffix.lower() in extensions:
                relative = file.relative_to(root).as_posix()
                records.append(ClipRecord(uid=os.path.splitext(relative)[0], source=relative, labels=(class_id,),
                                          label_names=(name,)))
    if not records:
        raise AnnotationError(
            f"{root}: no audio files ({', '.join(extensions)}) in class sub-folders; expected root/<class>/<file>"
        )
    return records


def split_records(records: Sequence[ClipRecord], test_fraction: float, seed: int = 0
                  ) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """A reproducible split, stratified by the first label: about `test_fraction` of every class goes to test (at
    least one clip of a class with two or more, and never the last one: every class keeps a training clip, so the
    train list still holds every class and fixes its id)."""
    import random

    if not 0 < test_fraction < 1:
        raise AnnotationError(f"test fraction {test_fraction} must be between 0 and 1")
    by_class: dict[int, list[ClipRecord]] = {}
    for record in records:
        by_class.setdefault(record.labels[0], []).append(record)
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_class):
        members = list(by_class[label])
        rng.shuffle(members)
        count = min(len(members) - 1, max(1, round(len(members) * test_fraction)))
        test.extend(members[:count])
        train.extend(members[count:])
    return train, test

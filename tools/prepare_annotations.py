"""Convert any supported annotation file into the project CSV, or make train/test lists of a folder-per-class tree.

Pickled DataFrames can run code when loaded; converting them once (in an environment you trust) and training from the
CSV removes that risk. Examples::

    python tools/prepare_annotations.py data/VGG-Sound/test.pkl --dataset vggsound --out data/VGG-Sound/test.csv
    python tools/prepare_annotations.py data/VGG-Sound/test.pkl --dataset vggsound \\
        --classes-out data/VGG-Sound/classes.txt
    python tools/prepare_annotations.py my_test.csv --dataset vggsound --class-map data/VGG-Sound/test.pkl \\
        --out test_ids.csv
    python tools/prepare_annotations.py data/VGG-Sound/train.pkl --dataset vggsound \\
        --out data/VGG-Sound/train_rest.csv --holdout-fraction 0.05 --holdout-out data/VGG-Sound/val.csv
    python tools/prepare_annotations.py --from-folders /data/mysounds --out-dir data/mysounds --test-fraction 0.2

The second writes the pickle's name -> id map as classes.txt (line number = id), which every split of a run then uses;
the third converts a list to the ids of another file or class list (to evaluate a checkpoint trained with those ids);
the fourth holds out a validation list from the train list (stratified by the first label, seeded), so that the best
checkpoint is not chosen on the test list. The last writes train.csv, test.csv and classes.txt for TRAIN.DATASET custom
(CUSTOM.AUDIO_DATA_DIR /data/mysounds CUSTOM.ANNOTATIONS_DIR data/mysounds MODEL.NUM_CLASSES <number of classes>).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playitback.data.annotations import (
    DATASETS,
    AnnotationError,
    class_index_from_records,
    read_annotations,
    read_class_list,
    records_from_folders,
    relabel_records,
    split_records,
    write_records_csv,
)
from playitback.data.records import ClipRecord


def load_class_map(source: str, dataset: str, allow_unsafe_pickle: bool) -> dict[str, int]:
    """A name -> id map from a class list (.txt, one name per line) or from the ids an annotation file stores."""
    if Path(source).suffix.lower() == ".txt":
        return read_class_list(source)
    return class_index_from_records(read_annotations(source, dataset, allow_unsafe_pickle=allow_unsafe_pickle))


def write_class_list(records: list[ClipRecord], path: str) -> int:
    """Write the records' classes as a class list (line number = id); returns the number of classes."""
    index = class_index_from_records(records)
    ids = sorted(index.values())
    if ids != list(range(len(ids))):
        gaps = sorted(set(range(ids[-1] + 1)) - set(ids))[:5]
        raise AnnotationError(
            f"the ids of these records are not 0..{len(ids) - 1} (no clip of id(s) {gaps}), so they cannot be written "
            "as a class list whose line number is the id; write it from a list that holds every class"
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{name}\n" for name in index), encoding="utf-8")
    return len(ids)


def from_folders(root: str, out_dir: str, test_fraction: float, seed: int) -> int:
    """Write train.csv, test.csv and classes.txt of a folder-per-class tree; returns the exit code."""
    try:
        records = records_from_folders(root)
        train, test = split_records(records, test_fraction, seed)
        out = Path(out_dir)
        write_records_csv(train, out / "train.csv")
        write_records_csv(test, out / "test.csv")
    except AnnotationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = sorted({(r.labels[0], r.label_names[0]) for r in records})
    (out / "classes.txt").write_text("".join(f"{name}\n" for _, name in names), encoding="utf-8")
    print(f"{len(names)} classes: wrote {len(train)} training and {len(test)} test clips to {out} "
          f"(use TRAIN.DATASET custom TEST.DATASET custom MODEL.NUM_CLASSES {len(names)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the converter; returns the process exit code (0 on success, 2 on a bad input)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", help="annotation file: original .pkl, official CSV, or project CSV")
    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--out", help="output project CSV")
    parser.add_argument("--from-folders", metavar="ROOT", help="make lists of ROOT/<class>/<file> instead")
    parser.add_argument("--out-dir", help="--from-folders: folder for train.csv, test.csv, classes.txt")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="--from-folders: share of each class for test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --from-folders and --holdout-fraction splits")
    parser.add_argument("--split", help="vggsound.csv only: keep this split (train or test)")
    parser.add_argument(
        "--class-labels", help="AudioSet segments only: class_labels_indices.csv (default: next to INPUT)"
    )
    parser.add_argument("--class-map", metavar="SOURCE",
                        help="convert the ids to this map: a class list (.txt) or an annotation file that stores ids")
    parser.add_argument("--classes-out", metavar="FILE", help="also write the classes as a class list (line = id)")
    parser.add_argument("--holdout-fraction", type=float,
                        help="hold out this share of every class (by the first label) into --holdout-out")
    parser.add_argument("--holdout-out", metavar="FILE", help="--holdout-fraction: the held-out project CSV")
    parser.add_argument(
        "--allow-unsafe-pickle",
        action="store_true",
        help="load pickles with pandas.read_pickle, which can run code: only for files you trust",
    )
    args = parser.parse_args(argv)
    if args.from_folders:
        if not args.out_dir:
            parser.error("--from-folders needs --out-dir")
        return from_folders(args.from_folders, args.out_dir, args.test_fraction, args.seed)
    if not (args.input and args.dataset and (args.out or args.classes_out)):
        parser.error("give INPUT --dataset D --out OUT.csv and/or --classes-out FILE "
                     "(or --from-folders ROOT --out-dir DIR)")
    if (args.holdout_fraction is None) != (args.holdout_out is None) or (args.holdout_out and not args.out):
        parser.error("--holdout-fraction and --holdout-out go together, with --out for the rest")
    try:
        records = read_annotations(
            args.input,
            args.dataset,
            split=args.split,
            class_labels_csv=args.class_labels,
            allow_unsafe_pickle=args.allow_unsafe_pickle,
        )
        if args.class_map:
            records = relabel_records(records, load_class_map(args.class_map, args.dataset, args.allow_unsafe_pickle))
        if args.classes_out:
            count = write_class_list(records, args.classes_out)
            print(f"wrote {count} classes to {args.classes_out}")
        if args.holdout_out:
            kept, held_out = split_records(records, args.holdout_fraction, args.seed)
            write_records_csv(kept, args.out)
            write_records_csv(held_out, args.holdout_out)
            print(f"wrote {len(kept)} records to {args.out} and {len(held_out)} held out to {args.holdout_out} "
                  f"(seed {args.seed})")
        elif args.out:
            write_records_csv(records, args.out)
            print(f"wrote {len(records)} records to {args.out}")
    except AnnotationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Convert any supported annotation file into the project CSV, or make train/test lists of a folder-per-class tree.

Pickled DataFrames can run code when loaded; converting them once (in an environment you trust) and training from the
CSV removes that risk. Examples::

    python tools/prepare_annotations.py data/VGG-Sound/test.pkl --dataset vggsound --out data/VGG-Sound/test.csv
    python tools/prepare_annotations.py --from-folders /data/mysounds --out-dir data/mysounds --test-fraction 0.2

The second writes train.csv, test.csv and classes.txt for TRAIN.DATASET custom (CUSTOM.AUDIO_DATA_DIR /data/mysounds
CUSTOM.ANNOTATIONS_DIR data/mysounds MODEL.NUM_CLASSES <number of classes>).
"""
from __future__ import annotations

import argparse
import sys

from pathlib import Path

from playitback.data.annotations import (
    DATASETS,
    AnnotationError,
    read_annotations,
    records_from_folders,
    split_records,
    write_records_csv,
)


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
    parser.add_argument("--seed", type=int, default=0, help="--from-folders: seed of the split")
    parser.add_argument("--split", help="vggsound.csv only: keep this split (train or test)")
    parser.add_argument(
        "--class-labels", help="AudioSet segments only: class_labels_indices.csv (default: next to INPUT)"
    )
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
    if not (args.input and args.dataset and args.out):
        parser.error("give INPUT --dataset D --out OUT.csv (or --from-folders ROOT --out-dir DIR)")
    try:
        records = read_annotations(
            args.input,
            args.dataset,
            split=args.split,
            class_labels_csv=args.class_labels,
            allow_unsafe_pickle=args.allow_unsafe_pickle,
        )
        write_records_csv(records, args.out)
    except AnnotationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

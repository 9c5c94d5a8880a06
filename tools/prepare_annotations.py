"""Convert any supported annotation file into the project CSV.

Pickled DataFrames can run code when loaded; converting them once (in an environment you trust) and training from the
CSV removes that risk. Example::

    python tools/prepare_annotations.py data/VGG-Sound/test.pkl --dataset vggsound --out data/VGG-Sound/test.csv
"""
from __future__ import annotations

import argparse
import sys

from playitback.data.annotations import DATASETS, AnnotationError, read_annotations, write_records_csv


def main(argv: list[str] | None = None) -> int:
    """Run the converter; returns the process exit code (0 on success, 2 on a bad input)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="annotation file: original .pkl, official CSV, or project CSV")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--out", required=True, help="output project CSV")
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

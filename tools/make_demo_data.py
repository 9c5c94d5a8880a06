"""Generate the synthetic demo dataset (VGG-Sound layout) used by ``make demo`` and the smoke tests.

Example::

    python tools/make_demo_data.py --out data/demo --seed 0
"""
from __future__ import annotations

import argparse
import sys
import time

from playitback.synthetic.demo import make_demo_dataset


def main(argv: list[str] | None = None) -> int:
    """Run the generator and print a summary; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=8)
    parser.add_argument("--train-per-class", type=int, default=48)
    parser.add_argument("--test-per-class", type=int, default=16)
    parser.add_argument("--clip-secs", type=float, default=4.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    try:
        summary = make_demo_dataset(
            args.out,
            num_classes=args.num_classes,
            train_per_class=args.train_per_class,
            test_per_class=args.test_per_class,
            clip_secs=args.clip_secs,
            sample_rate=args.sample_rate,
            seed=args.seed,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"demo dataset in {summary['out_dir']}: {summary['num_train']} train + {summary['num_test']} test clips of "
        f"{summary['clip_secs']} s at {summary['sample_rate']} Hz, {len(summary['class_names'])} classes "
        f"({time.perf_counter() - began:.1f} s)"
    )
    for class_id, name in enumerate(summary["class_names"]):
        print(f"  {class_id}: {name}")
    print(f"annotations: {summary['train_csv']}, {summary['test_csv']}, {summary['events_csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

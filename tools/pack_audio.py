#!/usr/bin/env python
"""Pack a dataset's audio into shards (a few large HDF5 files and an index) that a cluster reads well.

The clips are those of the config's annotation lists (train, val and test by default), read from the dataset's audio
location the way training reads them. Three storages (docs/performance.md#storage-files-or-shards has the measured
sizes and read rates):

    pcm16   mono int16 samples at AUDIO_DATA.SAMPLING_RATE: the fastest to read (no decoding), the largest
    flac    the same samples as 16-bit FLAC: lossless, about half the size, decoded in the DataLoader workers
    source  the audio files' own bytes (FLAC, MP3, ...) as they are: decoded exactly as the files would be

The run is parallel (--workers) and resumable: every shard is read back and checked against its checksums before it
is renamed into place, and a rerun of the same command keeps the complete shards. Clips that cannot be read are
listed in OUT/pack_failures.txt and left out. Train on the pack by giving its folder as the audio location
(<DATASET>.AUDIO_DATA_DIR, or EPICKITCHENS.AUDIO_DATA_FILE): DATA.STORAGE auto recognises it.

Examples:
    python tools/pack_audio.py --cfg configs/AudioSet/MViTv2_B.yaml --out /data/audioset_pcm16 --workers 16 \\
        AUDIOSET.AUDIO_DATA_DIR /data/audioset AUDIOSET.ANNOTATIONS_DIR data/AudioSet
    python tools/run_net.py --cfg configs/AudioSet/MViTv2_B.yaml AUDIOSET.AUDIO_DATA_DIR /data/audioset_pcm16 ...
    python tools/pack_audio.py --verify /data/audioset_pcm16
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from playitback.config import ConfigError, derived, load_config
from playitback.data.annotations import AnnotationError
from playitback.data.audio_io import AudioReadError
from playitback.data.build import build_reader, load_split_records
from playitback.data.shards import STORAGES, ShardError, pack_clips, verify_pack

FAILURES_FILE = "pack_failures.txt"
_SHOWN_FAILURES = 10


def clip_sources(cfg, splits: Sequence[str]) -> list[str]:
    """The distinct audio sources of the splits' records (the pack's clip ids)."""
    roots = {(derived.dataset_files(cfg, split).audio_root, derived.dataset_files(cfg, split).audio_ext)
             for split in splits}
    if len(roots) > 1:
        raise ValueError(f"the splits {', '.join(splits)} read audio from different places "
                         f"({sorted(map(str, roots))}); pack each place separately with --splits")
    return sorted({record.source for split in splits for record in load_split_records(cfg, split)})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", help="config whose annotation lists and audio location are packed")
    parser.add_argument("--out", help="pack folder to create or complete")
    parser.add_argument("--storage", default="pcm16", choices=STORAGES)
    parser.add_argument("--splits", nargs="+", default=list(derived.SPLITS), choices=derived.SPLITS,
                        help="splits whose clips are packed (default: all)")
    parser.add_argument("--clips-per-shard", type=int, default=1000, help="clips per shard file")
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    parser.add_argument("--verify", metavar="PACK", help="check an existing pack against its checksums and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.verify:
        try:
            print(f"{args.verify}: {verify_pack(args.verify)} clips, every shard matches its checksums")
        except ShardError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    if not (args.cfg and args.out):
        parser.error("give --cfg CONFIG --out FOLDER (or --verify PACK)")
    try:
        cfg = load_config(args.cfg, [*args.opts, "NUM_GPUS", "0"])
        sources = clip_sources(cfg, args.splits)
        reader = build_reader(cfg, args.splits[0])
        report = pack_clips(reader, sources, args.out, storage=args.storage, clips_per_shard=args.clips_per_shard,
                            workers=args.workers, progress=not args.no_progress)
    except (ConfigError, AnnotationError, AudioReadError, ShardError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    out = Path(args.out)
    (out / FAILURES_FILE).write_text("".join(f"{clip}\t{message}\n" for clip, message in report.failures))
    dataset = derived.split_dataset(cfg, args.splits[0])
    key = "EPICKITCHENS.AUDIO_DATA_FILE" if dataset == "epickitchens" else f"{dataset.upper()}.AUDIO_DATA_DIR"
    print(f"train on it with {key} {out}")
    if report.failures:
        print(f"{len(report.failures)} clip(s) could not be read and are not in the pack (all in "
              f"{out / FAILURES_FILE}); the first:", file=sys.stderr)
        for _, message in report.failures[:_SHOWN_FAILURES]:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

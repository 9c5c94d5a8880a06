#!/usr/bin/env python
"""Pack one audio file per video into a single HDF5 file, the EPIC-KITCHENS layout read by Hdf5AudioReader.

Each file becomes a 1-D dataset named after the file stem (the video id, e.g. ``P01_01``), float32 in [-1, 1) or
int16 PCM (half the size; the reader scales it back by 1/32768), with its rate in the dataset attribute
``sample_rate``. The attribute is written last, so a dataset without it is the remains of an interrupted run: a rerun
rewrites it, and skips every complete dataset.

Examples:
    python tools/extract_audio.py EPIC-KITCHENS/videos --out epic_wav --sample-rate 24000
    python tools/wav_to_hdf5.py epic_wav --out EPIC-KITCHENS-100_audio.hdf5 --dtype int16
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf
from tqdm import tqdm

from playitback.data.audio_io import AUDIO_EXTENSIONS, AudioReadError, float_to_pcm16, read_audio_file
from playitback.utils.cli import find_files, report_failures

DTYPES = ("float32", "int16")
RATE_ATTRIBUTE = "sample_rate"


@dataclass
class PackSummary:
    """Outcome of a run: datasets written and skipped, and (file, message) per failure."""

    written: int = 0
    skipped: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)


def find_audio(inputs: Iterable[str | Path]) -> list[Path]:
    """Audio files among `inputs` (folders searched recursively), each stem once.

    Raises:
        ValueError: A missing input, a folder without audio, or two files with the same stem (same dataset name).
    """
    found, problems = find_files(inputs, AUDIO_EXTENSIONS)
    if problems:
        raise ValueError(problems[0][1])
    files = [path for path, _ in found]
    owner: dict[str, Path] = {}
    for path in files:
        if path.stem in owner:
            raise ValueError(f"{owner[path.stem]} and {path} would both become dataset {path.stem!r}; keep one")
        owner[path.stem] = path
    return files


def to_storage(waveform: np.ndarray, dtype: str) -> np.ndarray:
    """float32 [S] in [-1, 1) -> the stored array: itself, or int16 ``round(x * 32768)`` clipped to the int16 range
    (the inverse of the reader's division by 32768)."""
    if dtype == "float32":
        return np.ascontiguousarray(waveform, dtype=np.float32)
    if dtype == "int16":
        return float_to_pcm16(waveform)
    raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")


def pack(files: Sequence[Path], out_path: str | Path, dtype: str = "float32", sample_rate: int | None = None,
         progress: bool = True) -> PackSummary:
    """Write every file as a dataset of `out_path` (appending to an existing file).

    Args:
        files: Audio files; the dataset name is the file stem.
        out_path: HDF5 file, created when missing.
        dtype: "float32" or "int16".
        sample_rate: Resample to this rate (soxr); None keeps each file's own rate.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        The run's :class:`PackSummary`; unreadable files are reported there and the others still written.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    summary = PackSummary()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(out_path, "a") as handle:
        for path in tqdm(files, unit="file", desc="hdf5", disable=not progress):
            key = path.stem
            if key in handle:
                if RATE_ATTRIBUTE in handle[key].attrs:
                    summary.skipped += 1
                    continue
                del handle[key]
            try:
                rate = sample_rate or sf.info(str(path)).samplerate
                waveform = read_audio_file(path, rate)
            except (AudioReadError, sf.LibsndfileError, RuntimeError) as err:
                summary.failures.append((path, str(err)))
                continue
            dataset = handle.create_dataset(key, data=to_storage(waveform, dtype))
            dataset.attrs[RATE_ATTRIBUTE] = int(rate)
            handle.flush()
            summary.written += 1
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="audio files and folders (searched recursively; run extract_audio.py first for other formats)")
    parser.add_argument("--out", required=True, help="HDF5 file to create or extend")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--sample-rate", type=int, default=None, help="resample to this rate (default: keep)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        files = find_audio(args.inputs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = pack(files, args.out, args.dtype, args.sample_rate, progress=not args.no_progress)
    print(f"{summary.written} written, {summary.skipped} already present, {len(summary.failures)} failed "
          f"(of {len(files)}) -> {args.out}")
    return report_failures(summary.failures)


if __name__ == "__main__":
    sys.exit(main())

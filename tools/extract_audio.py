#!/usr/bin/env python
"""Extract the audio track of video or audio files as 16 kHz mono wav/flac, in parallel and resumably.

Files that soundfile (libsndfile) decodes (wav, flac, ogg, mp3, aiff, ...) are decoded in Python, down-mixed by the
channel mean and resampled with soxr, so the common path needs no external program. Anything else (mp4, mkv, webm,
m4a, ...) goes through ffmpeg. Outputs are written to a temporary name and renamed when complete, so an interrupted run
never leaves a half-written file; a rerun skips every output that already exists and decodes.

Examples:
    python tools/extract_audio.py videos/ --out audio/ --jobs 8                  # videos/a/b.mp4 -> audio/a/b.wav
    python tools/extract_audio.py clip1.mp4 clip2.mkv --out audio/ --format flac --sample-rate 24000
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from playitback.data.audio_io import AUDIO_EXTENSIONS
from playitback.utils.cli import find_files, report_failures

# What ffmpeg converts: the audio the reader decodes, other audio codecs and video containers.
MEDIA_EXTENSIONS = (
    *AUDIO_EXTENSIONS, ".opus", ".m4a", ".aac", ".wma",
    ".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
)
OUTPUT_FORMATS = ("wav", "flac")
_FFMPEG_CODECS = {"wav": "pcm_s16le", "flac": "flac"}
_SOUNDFILE_FORMATS = {"wav": "WAV", "flac": "FLAC"}


class ExtractError(RuntimeError):
    """One input cannot be converted; the message names the file, the problem and the fix."""


@dataclass
class ExtractSummary:
    """Outcome of a run: counts of converted and skipped files, and (input, message) per failure."""

    converted: int = 0
    skipped: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)


def find_media(inputs: Iterable[str | Path], extensions: Sequence[str] = MEDIA_EXTENSIONS) -> list[tuple[Path, Path]]:
    """Media files to convert, each with its path relative to the output folder (without extension).

    A folder is searched recursively and keeps its sub-folder layout; a file given directly lands at the top of the
    output folder.

    Args:
        inputs: Files and folders.
        extensions: Lower-case suffixes (with the dot) that count as media inside folders.

    Returns:
        (input file, relative output stem) pairs, sorted within each input folder.

    Raises:
        ExtractError: An input does not exist, or a folder holds no media file.
    """
    files, problems = find_files(inputs, extensions, what="media")
    if problems:
        raise ExtractError(problems[0][1])
    return [(path, relative.with_suffix("")) for path, relative in files]


def plan_outputs(media: Sequence[tuple[Path, Path]], out_dir: str | Path, fmt: str) -> list[tuple[Path, Path]]:
    """(input, output file) pairs; two inputs that would write the same output are an error.

    Raises:
        ExtractError: For an unknown format or colliding outputs (e.g. ``a.mp4`` and ``a.mkv`` in one folder).
    """
    if fmt not in OUTPUT_FORMATS:
        raise ExtractError(f"output format {fmt!r} is not supported; use one of {', '.join(OUTPUT_FORMATS)}")
    out_dir = Path(out_dir)
    owner: dict[Path, Path] = {}
    pairs = []
    for source, stem in media:
        target = out_dir / stem.with_name(f"{stem.name}.{fmt}")
        if target in owner:
            raise ExtractError(f"{owner[target]} and {source} would both be written to {target}; rename one of them")
        owner[target] = source
        pairs.append((source, target))
    return pairs


def is_complete(path: str | Path) -> bool:
    """Whether an output exists and decodes: a readable header, at least one frame, and a readable last frame."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with sf.SoundFile(path) as handle:
            if handle.frames == 0:
                return False
            handle.seek(handle.frames - 1)
            return len(handle.read(1)) == 1
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return False


def _decode_with_soundfile(source: Path, sample_rate: int) -> np.ndarray | None:
    """float32 mono [S] at ``sample_rate``, or None when libsndfile does not know the format."""
    try:
        samples, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    mono = samples.mean(axis=1)
    if rate != sample_rate and mono.size:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _run_ffmpeg(ffmpeg: str, source: Path, target: Path, sample_rate: int, fmt: str) -> None:
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source), "-vn", "-ac", "1",
               "-ar", str(sample_rate), "-c:a", _FFMPEG_CODECS[fmt], "-f", fmt, str(target)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit code {result.returncode}"
        raise ExtractError(f"{source}: ffmpeg failed ({reason}); the file may be corrupt or hold no audio track")


def convert_file(source: str | Path, target: str | Path, sample_rate: int = 16000, ffmpeg: str | None = None) -> bool:
    """Convert one file to mono ``sample_rate`` audio at ``target`` (format from its suffix: .wav or .flac).

    Args:
        source: Video or audio file.
        target: Output file; its folder is created. Written under a temporary name and renamed when complete.
        sample_rate: Output rate in Hz.
        ffmpeg: ffmpeg executable for inputs libsndfile cannot decode; None when ffmpeg is unavailable.

    Returns:
        False when the output already existed and decodes (skipped), True when it was written.

    Raises:
        ExtractError: The input is missing, empty, undecodable, or needs ffmpeg and ffmpeg is missing.
    """
    source, target = Path(source), Path(target)
    if is_complete(target):
        return False
    if not source.is_file():
        raise ExtractError(f"{source}: input file not found")
    if source.stat().st_size == 0:
        raise ExtractError(f"{source}: the file is empty (0 bytes); download or copy it again")
    fmt = target.suffix.lstrip(".").lower()
    if fmt not in OUTPUT_FORMATS:
        raise ExtractError(f"{target}: output suffix must be one of {', '.join(OUTPUT_FORMATS)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        waveform = _decode_with_soundfile(source, sample_rate)
        if waveform is not None:
            if waveform.size == 0:
                raise ExtractError(f"{source}: decodes to no samples (empty audio); re-export the file")
            sf.write(tmp, waveform, sample_rate, format=_SOUNDFILE_FORMATS[fmt], subtype="PCM_16")
        elif ffmpeg is None:
            raise ExtractError(
                f"{source}: not a format libsndfile decodes, and ffmpeg was not found on PATH; install ffmpeg "
                "(apt-get install ffmpeg, or conda install -c conda-forge ffmpeg) or pass --ffmpeg /path/to/ffmpeg"
            )
        else:
            _run_ffmpeg(ffmpeg, source, tmp, sample_rate, fmt)
        if not is_complete(tmp):
            raise ExtractError(f"{source}: the converted audio is empty or unreadable; the input holds no audio")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _convert_or_message(source: Path, target: Path, sample_rate: int, ffmpeg: str | None) -> tuple[bool | None, str]:
    """convert_file for a worker process: (written?, "") or (None, error message) so one bad file stops nothing."""
    try:
        return convert_file(source, target, sample_rate, ffmpeg), ""
    except ExtractError as err:
        return None, str(err)
    except OSError as err:
        return None, f"{source}: {err}"


def extract_all(pairs: Sequence[tuple[Path, Path]], sample_rate: int = 16000, jobs: int = 1,
                ffmpeg: str | None = None, progress: bool = True) -> ExtractSummary:
    """Convert every (input, output) pair, `jobs` at a time, with a progress bar; failures are collected, not raised.

    Args:
        pairs: From :func:`plan_outputs`.
        sample_rate: Output rate in Hz.
        jobs: Worker processes (1 converts in this process).
        ffmpeg: ffmpeg executable, or None.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        The run's :class:`ExtractSummary`.
    """
    summary = ExtractSummary()

    def record(source: Path, written: bool | None, message: str) -> None:
        if written is None:
            summary.failures.append((source, message))
        elif written:
            summary.converted += 1
        else:
            summary.skipped += 1

    bar = tqdm(total=len(pairs), unit="file", desc="extract", disable=not progress)
    if jobs <= 1:
        for source, target in pairs:
            record(source, *_convert_or_message(source, target, sample_rate, ffmpeg))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_convert_or_message, s, t, sample_rate, ffmpeg): s for s, t in pairs}
            for future in as_completed(futures):
                record(futures[future], *future.result())
                bar.update()
    bar.close()
    summary.failures.sort()
    return summary


def find_ffmpeg(explicit: str | None = None) -> str | None:
    """The ffmpeg executable: `explicit` when given (must exist), else the one on PATH, else None.

    Raises:
        ExtractError: `explicit` is not an executable.
    """
    if explicit is None:
        return shutil.which("ffmpeg")
    found = shutil.which(explicit)
    if found is None:
        raise ExtractError(f"--ffmpeg {explicit}: not an executable; give the path of the ffmpeg program")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="video/audio files and folders (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (input folder layout is kept)")
    parser.add_argument("--format", default="wav", choices=OUTPUT_FORMATS)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel conversions")
    parser.add_argument("--ffmpeg", default=None, help="ffmpeg executable (default: the one on PATH)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        pairs = plan_outputs(find_media(args.inputs), args.out, args.format)
        ffmpeg = find_ffmpeg(args.ffmpeg)
    except ExtractError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = extract_all(pairs, args.sample_rate, args.jobs, ffmpeg, progress=not args.no_progress)
    print(f"{summary.converted} converted, {summary.skipped} already done, {len(summary.failures)} failed "
          f"(of {len(pairs)}) -> {args.out}")
    return report_failures(summary.failures)


if __name__ == "__main__":
    sys.exit(main())

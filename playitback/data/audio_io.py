"""Audio decoding: files through soundfile (libsndfile), EPIC-KITCHENS recordings through h5py.

Readers return the whole ``[start_s, stop_s)`` segment of a record as float32 mono at the requested rate; cropping to
the clip length is the dataset's job. Stereo is down-mixed by the channel mean and other rates are resampled with
soxr, so the original's failures on stereo files and at unexpected rates become conversions, and broken
files raise :class:`AudioReadError` naming the file.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np
import soundfile as sf
import soxr

from playitback.data.records import ClipRecord
from playitback.utils.errors import UserError

__all__ = [
    "AudioRateError",
    "AudioReadError",
    "FileAudioReader",
    "Hdf5AudioReader",
    "decode_segment",
    "finish_samples",
    "float_to_pcm16",
    "pcm_to_float",
    "read_audio_file",
    "segment_frames",
]

_RESAMPLE_QUALITY = "HQ"


# The file types read_audio_file decodes (libsndfile), lower case with the dot: what the tools look for in folders.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff")


class AudioReadError(UserError, RuntimeError):
    """An audio file or HDF5 entry cannot be read; the message names the file and the problem."""


class ShortAudioError(AudioReadError):
    """An audio file that decodes to much less audio than its annotation or the clip length says (a partial download,
    a cut file). Its message starts with ``short:``, the kind bad_files.txt and the epoch's counts name it by."""

    KIND = "short"


class AudioRateError(UserError, ValueError):
    """The recordings' lengths do not fit their annotations at the rate they would be read at."""


# Rates a recording is commonly stored at: the "likely rate" an error names is one of these.
COMMON_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
# Annotated stops a little past the end of the audio are common in EPIC-KITCHENS (the reader clamps them).
_STOP_PAST_END_S = 1.0
# Recordings whose audio runs this much longer than their last annotated action, every one of them, are read at too
# low a rate: EPIC-KITCHENS annotations cover their videos to the end.
_IMPLAUSIBLE_TAIL = 1.2


def segment_frames(where: str, total: int, rate: int, start_s: float, stop_s: float | None) -> tuple[int, int]:
    """``[start_s, stop_s)`` in seconds -> ``[first, last)`` frame indices at ``rate``, clamped to ``total`` frames.

    An annotated stop slightly past the end (common with EPIC-KITCHENS timestamps) is clamped; a segment that starts
    at or after the end of the audio is an error.
    """
    first = round(start_s * rate)
    last = total if stop_s is None else min(round(stop_s * rate), total)
    if first < 0 or first >= total or last <= first:
        raise AudioReadError(
            f"{where}: segment [{start_s}, {stop_s}) s is empty or outside the audio ({total / rate:.3f} s long); "
            "check the annotation times against the audio"
        )
    return first, last


def finish_samples(where: str, samples: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """Check and resample decoded mono samples.

    Args:
        where: File (and key) for error messages.
        samples: Decoded audio, ``[S_in]``.
        rate: The audio's rate.
        sample_rate: The rate to return.

    Returns:
        float32 ``[S]`` with ``S = ceil(S_in * sample_rate / rate)`` (soxr's length).
    """
    if samples.size == 0:
        raise AudioReadError(f"{where}: no audio samples after decoding (empty file); re-extract the audio")
    if not np.isfinite(samples).all():
        raise AudioReadError(f"{where}: the audio holds NaN or infinite samples; re-extract the audio")
    if rate != sample_rate:
        samples = soxr.resample(samples, rate, sample_rate, quality=_RESAMPLE_QUALITY)
    return np.ascontiguousarray(samples, dtype=np.float32)


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """Integer PCM ``[S]`` -> float32 in [-1, 1), divided by 2 ** (bits - 1) as libsndfile does; floats pass."""
    if np.issubdtype(samples.dtype, np.integer):
        scaled = samples.astype(np.float32)
        scaled *= 2.0 ** (1 - 8 * samples.dtype.itemsize)  # a power of two: the same values as the division
        return scaled
    return samples.astype(np.float32, copy=False)


def float_to_pcm16(waveform: np.ndarray) -> np.ndarray:
    """float32 ``[S]`` in [-1, 1) -> int16 ``round(x * 32768)`` clipped to the int16 range: the exact inverse of
    :func:`pcm_to_float` for audio that was 16-bit PCM."""
    return np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)


def decode_segment(
    source: str | Path | BinaryIO, where: str, start_s: float = 0.0, stop_s: float | None = None
) -> tuple[np.ndarray, int]:
    """Decode ``[start_s, stop_s)`` of an audio file or an in-memory encoded file to mono at the file's own rate.

    Only the requested frames are read (seek) and channels are averaged.

    Args:
        source: A path, or a binary file object holding an encoded file (wav/flac/ogg/mp3).
        where: Names the audio in error messages.
        start_s: Segment start in seconds.
        stop_s: Segment end in seconds (clamped to the end); ``None`` reads to the end.

    Returns:
        (float32 samples ``[S]``, the file's sample rate).

    Raises:
        AudioReadError: Not decodable audio, empty, or the segment lies outside it.
        ShortAudioError: Fewer frames decode than the header promises (a cut file).
    """
    try:
        with sf.SoundFile(source) as handle:
            rate = handle.samplerate
            if handle.frames == 0:
                raise AudioReadError(f"{where}: no audio samples after decoding (empty file); re-extract the audio")
            first, last = segment_frames(where, handle.frames, rate, start_s, stop_s)
            if first:
                handle.seek(first)
            frames, failure = _read_frames(handle, last - first)
    except AudioReadError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioReadError(
            f"{where}: cannot decode as audio ({err}); the file is corrupt or not wav/flac/ogg/mp3"
        ) from err
    if len(frames) != last - first:
        raise ShortAudioError(
            f"{ShortAudioError.KIND}: {where}: only {len(frames) / rate:.2f} s of the {(last - first) / rate:.2f} s "
            f"its header promises from {first / rate:.2f} s could be decoded{f' ({failure})' if failure else ''}: "
            "a partial download or a cut file; re-extract the audio"
        )
    return (frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1)), rate


def _read_frames(handle: sf.SoundFile, count: int, block: int = 1 << 14) -> tuple[np.ndarray, str]:
    """Up to `count` frames [N, channels] from the handle's position, block by block, so that a stream that breaks
    off (a cut FLAC or MP3 loses sync) gives what came before the break; and the decoder's error ("" if none)."""
    blocks, remaining = [], count
    while remaining > 0:
        try:
            chunk = handle.read(min(block, remaining), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            return _stack(blocks, handle.channels), str(err)
        if not len(chunk):
            break
        blocks.append(chunk)
        remaining -= len(chunk)
    return _stack(blocks, handle.channels), ""


def _stack(blocks: list[np.ndarray], channels: int) -> np.ndarray:
    return np.concatenate(blocks) if blocks else np.zeros((0, channels), dtype=np.float32)


def read_audio_file(
    path: str | Path, sample_rate: int, start_s: float = 0.0, stop_s: float | None = None
) -> np.ndarray:
    """Decode ``[start_s, stop_s)`` of an audio file (wav/flac/ogg/mp3) to float32 mono at ``sample_rate``.

    Only the requested frames are read (seek), channels are averaged, and another rate is resampled with soxr (HQ).

    Args:
        path: Audio file.
        sample_rate: Output rate in Hz.
        start_s: Segment start in seconds.
        stop_s: Segment end in seconds (clamped to the file's end); ``None`` reads to the end.

    Returns:
        Waveform ``[S]``, S the number of samples of the segment at ``sample_rate``.

    Raises:
        AudioReadError: The file is missing, not decodable audio, truncated, empty, holds NaN/inf samples, or the
            segment lies outside it.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"{path}: audio file not found; check the audio folder and the annotation's source")
    samples, rate = decode_segment(path, str(path), start_s, stop_s)
    return finish_samples(str(path), samples, rate, sample_rate)


class FileAudioReader:
    """Reads one audio file per record: ``root / (record.source + extension)`` (VGG-Sound, AudioSet, own folders).

    Args:
        root: Audio root folder.
        extension: File extension, with or without the dot (``"wav"``, ``".flac"``); empty when the sources carry it.
        sample_rate: Output rate in Hz.
    """

    def __init__(self, root: str | Path, extension: str, sample_rate: int) -> None:
        self.root = Path(root)
        self.extension = extension if not extension or extension.startswith(".") else f".{extension}"
        self.sample_rate = sample_rate

    def path(self, record: ClipRecord) -> Path:
        """The audio file of ``record`` (the source may contain dots, so the extension is appended, not swapped)."""
        return self.root / f"{record.source}{self.extension}"

    def has_audio(self, record: ClipRecord) -> bool:
        """Whether the record's file exists."""
        return self.path(record).is_file()

    def __call__(self, record: ClipRecord) -> np.ndarray:
        """The record's ``[start_s, stop_s)`` segment as float32 ``[S]`` at ``sample_rate``."""
        return read_audio_file(self.path(record), self.sample_rate, record.start_s, record.stop_s)

    def cache_key(self, records: Sequence[ClipRecord]) -> list[object]:
        """What an existence check depends on: the root, and the modification time of every folder the records'
        files are in (adding or deleting a file changes its folder's time)."""
        folders = sorted({os.path.dirname(self.path(record)) for record in records})
        return [str(self.root), self.extension, *((folder, mtime_ns(folder)) for folder in folders)]


def mtime_ns(path: str | Path) -> int | None:
    """Modification time of a file or folder in nanoseconds, or None when it does not exist."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class Hdf5AudioReader:
    """Reads record segments from one HDF5 file holding a 1-D dataset per untrimmed recording (EPIC-KITCHENS).

    The file opens on first use, so an unopened reader pickles into DataLoader workers and each worker opens its own
    handle. Only the slice ``[start_s, stop_s)`` is read from disk. The stored rate is the dataset attribute
    ``sample_rate`` (else the file attribute of that name, else ``stored_rate``); a different rate is resampled, and a
    missing one is taken to be ``sample_rate`` with a single warning (:meth:`check_lengths` then checks that guess
    against the annotations). Integer PCM datasets are scaled to [-1, 1).

    Args:
        path: The HDF5 file.
        sample_rate: Output rate in Hz.
        stored_rate: Rate of recordings without a ``sample_rate`` attribute (EPICKITCHENS.AUDIO_SAMPLE_RATE), or
            None.
    """

    def __init__(self, path: str | Path, sample_rate: int, stored_rate: int | None = None) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.stored_rate = stored_rate
        self._file: h5py.File | None = None
        self._warned_rate = False
        if not self.path.is_file():
            raise AudioReadError(f"{self.path}: HDF5 audio file not found; check EPICKITCHENS.AUDIO_DATA_FILE")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def _open(self) -> h5py.File:
        if self._file is None:
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise AudioReadError(f"{self.path}: cannot open as HDF5 ({err}); check the file") from err
        return self._file

    def _stored_rate(self, dataset: h5py.Dataset) -> int | None:
        rate = dataset.attrs.get("sample_rate", dataset.file.attrs.get("sample_rate", self.stored_rate))
        return None if rate is None else int(rate)

    def _rate(self, dataset: h5py.Dataset) -> int:
        rate = self._stored_rate(dataset)
        if rate is not None:
            return rate
        if not self._warned_rate:
            warnings.warn(
                f"{self.path}: no 'sample_rate' attribute on the datasets or the file; assuming {self.sample_rate} Hz. "
                "Add the attribute (h5py: f[key].attrs['sample_rate'] = rate) so a wrong rate cannot go unnoticed.",
                stacklevel=3,
            )
            self._warned_rate = True
        return self.sample_rate

    def has_audio(self, record: ClipRecord) -> bool:
        """Whether the file holds the record's recording."""
        return record.source in self._open()

    def __call__(self, record: ClipRecord) -> np.ndarray:
        """The record's ``[start_s, stop_s)`` segment of recording ``record.source``, float32 ``[S]``."""
        handle = self._open()
        where = f"{self.path} [{record.source}]"
        if record.source not in handle:
            raise AudioReadError(
                f"{self.path}: no dataset for recording {record.source!r}; rebuild the HDF5 with that video included"
            )
        dataset = handle[record.source]
        if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 1:
            raise AudioReadError(f"{where}: expected a 1-D audio dataset, found {dataset}; rebuild the HDF5")
        rate = self._rate(dataset)
        first, last = segment_frames(where, dataset.shape[0], rate, record.start_s, record.stop_s)
        samples = dataset[first:last]
        return finish_samples(where, pcm_to_float(samples), rate, self.sample_rate)

    def check_lengths(self, records: Sequence[ClipRecord]) -> None:
        """Check every recording's length against the last annotated stop of its records, at the rate it is read at.

        A file without a ``sample_rate`` attribute read at the wrong rate shifts every timestamp (a 24 kHz file read
        as 16 kHz puts each action 1.5 times later than it is, and nothing fails). So: a recording that ends more than
        1 s before its last action is an error at any rate, and when the rate is a guess (no attribute, no
        ``stored_rate``), recordings that all run at least 1.2 times longer than their last action are one too. The
        message names the likely rate: the largest common rate the lengths allow.

        Raises:
            AudioRateError: As above, naming the file, a recording, its seconds of audio and of annotation.
        """
        handle = self._open()
        last_stop: dict[str, float] = {}
        for record in records:
            stop = record.stop_s if record.stop_s is not None else record.start_s
            last_stop[record.source] = max(stop, last_stop.get(record.source, 0.0))
        lengths, rates, guessed = {}, {}, set()
        for source, stop in last_stop.items():
            dataset = handle.get(source)
            if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 1 or stop <= 0:
                continue
            lengths[source] = dataset.shape[0]
            stored = self._stored_rate(dataset)
            if stored is None:
                guessed.add(source)
            rates[source] = stored or self.sample_rate
        if not lengths:
            return
        # samples per annotated second: an upper bound of the true rate when the actions lie inside the audio
        bound = min(lengths[s] / last_stop[s] for s in lengths)
        likely = max((r for r in COMMON_RATES if r <= bound * 1.01), default=round(bound))
        short = [s for s in lengths if lengths[s] / rates[s] < last_stop[s] - _STOP_PAST_END_S]
        how = ("the stored rate" if not guessed else
               f"{self.sample_rate} Hz (no sample_rate attribute: AUDIO_DATA.SAMPLING_RATE is assumed)")
        fix = (f"; if the file is {likely} Hz, set EPICKITCHENS.AUDIO_SAMPLE_RATE {likely} or add the attribute "
               f"(h5py: f[key].attrs['sample_rate'] = {likely}; tools/wav_to_hdf5.py writes it)")
        if short:
            first = short[0]
            raise AudioRateError(
                f"{self.path}: read at {how}, {len(short)} of {len(lengths)} recordings end before their last "
                f"annotated action ({first}: {lengths[first] / rates[first]:.1f} s of audio, last action stops at "
                f"{last_stop[first]:.1f} s); the rate is wrong or the file does not match the annotations{fix}"
            )
        tails = [lengths[s] / rates[s] / last_stop[s] for s in guessed]
        if tails and min(tails) >= _IMPLAUSIBLE_TAIL:
            raise AudioRateError(
                f"{self.path}: read at {how}, every one of its {len(tails)} recordings runs at least "
                f"{min(tails):.2f}x longer than its last annotated action, which annotations that cover their videos "
                f"do not allow: the file is most likely {likely} Hz (auditory-slow-fast's HDF5 is 24000 Hz){fix}"
            )

    def cache_key(self, records: Sequence[ClipRecord]) -> list[object]:
        """What an existence check depends on: the file and its modification time."""
        return [str(self.path), mtime_ns(str(self.path))]

    def close(self) -> None:
        """Close the HDF5 handle (reopened on the next call)."""
        if self._file is not None:
            self._file.close()
            self._file = None

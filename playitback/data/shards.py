"""Packed audio shards: every clip of a dataset in a few large HDF5 files, read by clip id.

A cluster filesystem serves millions of small files badly (every open is a metadata round trip), and decoding
compressed audio is what limits a loader (docs/performance.md#storage-files-or-shards gives the measured figures).
A pack holds the clips in shards of about a thousand clips each, in one of two storage kinds:

* ``pcm16``: mono int16 samples at one rate. Reading a clip is one ``pread`` of the requested segment: no decoding.
* ``encoded``: each clip as an encoded file (the source files' own bytes, e.g. FLAC or MP3, or re-encoded as FLAC),
  decoded in the DataLoader worker with soundfile: smaller, and as slow to read as the files themselves.

Layout of a pack folder (written by :func:`pack_clips`, or ``tools/pack_audio.py``)::

    shard_index.h5              every clip, sorted by id: clip_id, shard, offset, length, frames, sample_rate, crc32
    shards/shard_00000.h5, ...  dataset "audio" (1-D, contiguous): the clips one after another, int16 samples or uint8
                                bytes of encoded files; the same table for its own clips; a "failures" list

The clip id is the record's ``source`` (the audio path under the audio root without its extension, or the EPIC-KITCHENS
video id), so one pack serves every split and config whose lists name the same audio. ``offset`` and ``length`` count
samples (pcm16) or bytes (encoded) inside the shard's "audio" dataset, ``frames`` and ``sample_rate`` describe the
decoded clip, and ``crc32`` is the checksum of the stored bytes. Every shard is written to a temporary name, read back
and checked against the checksums, then renamed, so a rerun skips the shards that are complete and rewrites the rest.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import soundfile as sf
from tqdm import tqdm

from playitback.data.audio_io import (
    AudioReadError,
    FileAudioReader,
    decode_segment,
    finish_samples,
    float_to_pcm16,
    mtime_ns,
    pcm_to_float,
    segment_frames,
)
from playitback.data.records import ClipRecord
from playitback.utils.errors import UserError

__all__ = [
    "INDEX_NAME",
    "STORAGES",
    "PackReport",
    "ShardAudioReader",
    "ShardError",
    "ShardJob",
    "ShardReport",
    "is_pack",
    "pack_clips",
    "plan_shards",
    "verify_pack",
    "write_shard",
]

INDEX_NAME = "shard_index.h5"
SHARD_DIR = "shards"
FORMAT = "playitback-shards"
VERSION = 1
# What pack_clips writes: raw samples, the source files re-encoded as FLAC, or the source files' bytes as they are.
STORAGES = ("pcm16", "flac", "source")
_TABLE = ("clip_id", "offset", "length", "frames", "sample_rate", "crc32")
_COPY_BLOCK = 1 << 26  # bytes moved per write when the payload is copied into the HDF5 file


class ShardError(UserError, RuntimeError):
    """A pack is incomplete, inconsistent or corrupt; the message names the file, the clip and the fix."""


def is_pack(path: str | Path) -> bool:
    """Whether `path` is a pack folder (holds a shard index)."""
    return (Path(path) / INDEX_NAME).is_file()


def storage_kind(storage: str) -> str:
    """How a storage of :data:`STORAGES` is kept in the shards: "pcm16" (samples) or "encoded" (bytes of files)."""
    if storage not in STORAGES:
        raise ValueError(f"storage {storage!r} is not supported; use one of {', '.join(STORAGES)}")
    return "pcm16" if storage == "pcm16" else "encoded"


Reader = Callable[[ClipRecord], np.ndarray]


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its path, its clips, where their audio comes from and how it is stored.

    Attributes:
        path: The shard file.
        clip_ids: Sources of the clips, in the order they are stored.
        reader: Reads a clip's whole audio (the record has ``source = clip id``); for ``storage="source"`` it must be a
            :class:`FileAudioReader`, whose files are copied byte for byte. pcm16 and flac store its output at its
            ``sample_rate``.
        storage: One of :data:`STORAGES`.
    """

    path: Path
    clip_ids: tuple[str, ...]
    reader: Reader
    storage: str

    def plan_key(self) -> str:
        """A digest of everything that decides the shard's content: a complete shard with the same key is kept."""
        rate = None if self.storage == "source" else getattr(self.reader, "sample_rate", None)
        text = json.dumps([FORMAT, VERSION, self.storage, rate, list(self.clip_ids)])
        return hashlib.sha1(text.encode()).hexdigest()


@dataclass
class ShardReport:
    """What writing one shard did.

    Attributes:
        path: The shard file.
        clips: Clips stored in it.
        stored_bytes: Bytes of its "audio" dataset.
        source_bytes: Bytes of the source files read (0 when the source is not a file per clip).
        seconds: Wall time spent on it (0 when it was already complete).
        skipped: It was complete already (same plan) and was kept.
        failures: (clip id, message) of every clip that could not be read.
    """

    path: Path
    clips: int
    stored_bytes: int
    source_bytes: int
    seconds: float
    skipped: bool
    failures: list[tuple[str, str]] = field(default_factory=list)


def _encode(job: ShardJob, clip_id: str) -> tuple[bytes, int, int, int]:
    """(stored bytes, decoded frames, sample rate, source bytes) of one clip."""
    record = ClipRecord(uid=clip_id, source=clip_id, labels=())
    path = job.reader.path(record) if isinstance(job.reader, FileAudioReader) else None
    if job.storage == "source":
        if path is None or not path.is_file():
            raise AudioReadError(f"{path}: audio file not found; check the audio folder and the annotation's source")
        data = path.read_bytes()
        # Decoding once here rejects broken files at packing time instead of in the middle of a training run.
        samples, rate = decode_segment(io.BytesIO(data), str(path))
        finish_samples(str(path), samples, rate, rate)
        return data, samples.shape[0], rate, len(data)
    pcm = float_to_pcm16(job.reader(record))
    rate = int(job.reader.sample_rate)
    source_bytes = path.stat().st_size if path is not None else 0
    if job.storage == "pcm16":
        return pcm.astype("<i2").tobytes(), pcm.shape[0], rate, source_bytes
    buffer = io.BytesIO()
    sf.write(buffer, pcm, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue(), pcm.shape[0], rate, source_bytes


def _read_table(group: h5py.Group) -> dict[str, np.ndarray]:
    return {name: group[name][()] for name in _TABLE}


def _write_table(group: h5py.Group, table: dict[str, Sequence[Any]]) -> None:
    ids = [clip_id.encode() for clip_id in table["clip_id"]]
    group.create_dataset("clip_id", data=np.array(ids, dtype=f"S{max([1, *map(len, ids)])}"))
    for name, dtype in (("offset", np.int64), ("length", np.int64), ("frames", np.int64), ("sample_rate", np.int32),
                        ("crc32", np.uint32)):
        group.create_dataset(name, data=np.asarray(table[name], dtype=dtype))


def _payload_dtype(kind: str) -> np.dtype:
    return np.dtype("<i2") if kind == "pcm16" else np.dtype(np.uint8)


def _data_offset(path: Path) -> int | None:
    """Byte offset of the "audio" dataset inside a shard file (None while it holds no data)."""
    with h5py.File(path, "r") as handle:
        audio = handle["audio"]
        if audio.chunks is not None or audio.compression is not None:
            raise ShardError(f"{path}: the audio dataset is chunked or compressed (rewritten by another tool?); "
                             "rebuild the pack with tools/pack_audio.py")
        return audio.id.get_offset()


def _attrs(path: Path) -> dict[str, Any]:
    try:
        with h5py.File(path, "r") as handle:
            return dict(handle.attrs)
    except OSError:
        return {}


def write_shard(job: ShardJob) -> ShardReport:
    """Write one shard (or keep it when it is complete with the same plan), read it back and check every clip.

    Clips whose audio cannot be read are left out and listed in the report and in the shard's "failures".

    Raises:
        ShardError: What was written does not read back identically (disk or filesystem fault).
    """
    start = time.perf_counter()
    attrs = _attrs(job.path) if job.path.is_file() else {}
    if attrs.get("plan") == job.plan_key():
        with h5py.File(job.path, "r") as handle:
            failures = [tuple(line.decode().split("\t", 1)) for line in handle["failures"][()]]
            return ShardReport(job.path, len(handle["clip_id"]), handle["audio"].nbytes,
                               int(attrs.get("source_bytes", 0)), 0.0, True, failures)
    kind = storage_kind(job.storage)
    unit = _payload_dtype(kind).itemsize
    partial = job.path.with_name(job.path.name + ".partial")
    payload = job.path.with_name(job.path.name + ".payload")
    table: dict[str, list[Any]] = {name: [] for name in _TABLE}
    failures: list[tuple[str, str]] = []
    stored = source_bytes = 0
    with open(payload, "wb") as raw:
        for clip_id in job.clip_ids:
            try:
                data, frames, rate, read = _encode(job, clip_id)
            except AudioReadError as err:
                failures.append((clip_id, str(err)))
                continue
            raw.write(data)
            for name, value in zip(_TABLE, (clip_id, stored // unit, len(data) // unit, frames, rate,
                                            zlib.crc32(data))):
                table[name].append(value)
            stored += len(data)
            source_bytes += read
    with h5py.File(partial, "w") as handle:
        audio = handle.create_dataset("audio", shape=(stored // unit,), dtype=_payload_dtype(kind))
        with open(payload, "rb") as raw:
            position = 0
            while block := raw.read(_COPY_BLOCK):
                values = np.frombuffer(block, dtype=_payload_dtype(kind))
                audio[position:position + values.shape[0]] = values
                position += values.shape[0]
        _write_table(handle, table)
        handle.create_dataset("failures", data=np.array([f"{c}\t{m}".encode() for c, m in failures], dtype=object),
                              dtype=h5py.string_dtype())
        handle.attrs.update(format=FORMAT, version=VERSION, storage=kind, codec=job.storage, plan=job.plan_key(),
                            source_bytes=source_bytes)
    payload.unlink()
    verify_shard(partial)
    os.replace(partial, job.path)
    return ShardReport(job.path, len(table["clip_id"]), stored, source_bytes, time.perf_counter() - start, False,
                       failures)


def verify_shard(path: str | Path) -> int:
    """Read every clip of a shard back and check its length and checksum; returns the number of clips.

    Raises:
        ShardError: A clip lies outside the audio dataset, overlaps another, or its bytes differ from its checksum.
    """
    path = Path(path)
    with h5py.File(path, "r") as handle:
        table = _read_table(handle)
        unit = handle["audio"].dtype.itemsize
        total = handle["audio"].shape[0]
    offset = _data_offset(path) if total else None
    expected_start = 0
    with open(path, "rb") as raw:
        for clip_id, start, length, crc in zip(table["clip_id"], table["offset"], table["length"], table["crc32"]):
            name = clip_id.decode()
            if start != expected_start or start + length > total:
                raise ShardError(f"{path}: clip {name!r} at [{start}, {start + length}) does not follow the previous "
                                 f"clip inside the audio dataset ({total} values); rebuild this shard")
            expected_start = start + length
            raw.seek(offset + int(start) * unit)
            data = raw.read(int(length) * unit)
            if len(data) != length * unit or zlib.crc32(data) != crc:
                raise ShardError(f"{path}: clip {name!r} does not match its checksum (the file is corrupt or was "
                                 "changed); delete this shard and run tools/pack_audio.py again to rewrite it")
    return len(table["clip_id"])


def plan_shards(clip_ids: Iterable[str], clips_per_shard: int) -> list[tuple[str, ...]]:
    """The clips of each shard: the distinct ids, sorted, in consecutive groups of `clips_per_shard`."""
    if clips_per_shard < 1:
        raise ValueError(f"clips_per_shard must be at least 1, not {clips_per_shard}")
    ordered = sorted(set(clip_ids))
    return [tuple(ordered[i:i + clips_per_shard]) for i in range(0, len(ordered), clips_per_shard)]


def _write_index(root: Path, shard_paths: Sequence[Path]) -> Path:
    """Merge the shards' tables into root/shard_index.h5, sorted by clip id (written atomically)."""
    parts, kinds = [], set()
    for number, path in enumerate(shard_paths):
        with h5py.File(path, "r") as handle:
            kinds.add(handle.attrs["storage"])
            table = _read_table(handle)
        table["shard"] = np.full(len(table["clip_id"]), number, dtype=np.int32)
        parts.append(table)
    if len(kinds) > 1:
        raise ShardError(f"{root}: the shards mix storage kinds {sorted(kinds)}; pack into an empty folder")
    merged = {name: np.concatenate([part[name] for part in parts]) for name in (*_TABLE, "shard")}
    order = np.argsort(merged["clip_id"], kind="stable")
    ids = merged["clip_id"][order]
    repeated = np.flatnonzero(ids[1:] == ids[:-1])
    if repeated.size:
        raise ShardError(f"{root}: clip {ids[repeated[0]].decode()!r} is stored in two shards; pack into an empty "
                         "folder")
    partial = root / (INDEX_NAME + ".partial")
    with h5py.File(partial, "w") as handle:
        for name, values in merged.items():
            handle.create_dataset(name, data=values[order])
        handle.create_dataset("shard_files", data=[p.relative_to(root).as_posix() for p in shard_paths],
                              dtype=h5py.string_dtype())
        handle.attrs.update(format=FORMAT, version=VERSION, storage=kinds.pop())
    os.replace(partial, root / INDEX_NAME)
    return root / INDEX_NAME


@dataclass
class PackReport:
    """What :func:`pack_clips` did: one report per shard, the wall time and the index written."""

    shards: list[ShardReport]
    seconds: float
    index: Path

    @property
    def clips(self) -> int:
        return sum(s.clips for s in self.shards)

    @property
    def written_clips(self) -> int:
        return sum(s.clips for s in self.shards if not s.skipped)

    @property
    def failures(self) -> list[tuple[str, str]]:
        return [failure for s in self.shards for failure in s.failures]

    @property
    def stored_bytes(self) -> int:
        return sum(s.stored_bytes for s in self.shards)

    @property
    def source_bytes(self) -> int:
        return sum(s.source_bytes for s in self.shards)

    def summary(self) -> str:
        """One line: clips, shards, failures, bytes and the packing rate."""
        skipped = sum(s.skipped for s in self.shards)
        rate = self.written_clips / self.seconds if self.seconds > 0 else 0.0
        per_clip = self.stored_bytes / max(self.clips, 1)
        read = f", {self.stored_bytes / self.source_bytes:.2f}x the {_size(self.source_bytes)} of source files" \
            if self.source_bytes else ""
        return (f"{self.clips} clips in {len(self.shards)} shards ({skipped} complete from an earlier run, kept), "
                f"{len(self.failures)} failed; {_size(self.stored_bytes)} stored ({_size(per_clip)} per clip{read}); "
                f"{self.written_clips} clips written in {self.seconds:.1f} s = {rate:.1f} clips/s; index {self.index}")


def _size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB"):
        if num_bytes < 1000:
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f} GB"


def pack_clips(reader: Reader, clip_ids: Iterable[str], out_dir: str | Path, storage: str = "pcm16",
               clips_per_shard: int = 1000, workers: int = 1, progress: bool = True) -> PackReport:
    """Pack the audio of `clip_ids` into shards under `out_dir` and write its index; resumable and parallel.

    Args:
        reader: Reads a clip's audio from a record whose ``source`` is the clip id (the files reader of a dataset, an
            HDF5 reader, or the reader of another pack); pcm16 and flac store its output at its ``sample_rate``.
        clip_ids: Record sources to pack (repeats are packed once).
        out_dir: The pack folder (created; complete shards of an earlier run with the same plan are kept).
        storage: "pcm16" (raw samples), "flac" (re-encoded losslessly as 16-bit FLAC) or "source" (the source files'
            bytes as they are, decoded when read; needs a :class:`FileAudioReader`).
        clips_per_shard: Clips per shard file.
        workers: Processes writing shards in parallel.
        progress: Show a progress bar on stderr.

    Returns:
        The :class:`PackReport`; clips that could not be read are listed in it and left out of the pack.
    """
    storage_kind(storage)
    if storage == "source" and not isinstance(reader, FileAudioReader):
        raise ValueError(f"storage 'source' copies audio files, but the audio is read by {type(reader).__name__}; "
                         "use storage pcm16 or flac")
    root = Path(out_dir)
    (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    for stale in list((root / SHARD_DIR).glob("*.partial")) + list((root / SHARD_DIR).glob("*.payload")):
        stale.unlink()  # the remains of an interrupted run
    jobs = [ShardJob(root / SHARD_DIR / f"shard_{number:05d}.h5", ids, reader, storage)
            for number, ids in enumerate(plan_shards(clip_ids, clips_per_shard))]
    if not jobs:
        raise ValueError("no clips to pack; check the annotation lists")
    start = time.perf_counter()
    reports: list[ShardReport] = []
    bar = tqdm(total=sum(len(job.clip_ids) for job in jobs), unit="clip", desc="pack", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for future in as_completed([pool.submit(write_shard, job) for job in jobs]):
                reports.append(future.result())
                bar.update(reports[-1].clips + len(reports[-1].failures))
    else:
        for job in jobs:
            reports.append(write_shard(job))
            bar.update(reports[-1].clips + len(reports[-1].failures))
    bar.close()
    reports.sort(key=lambda report: report.path)
    index = _write_index(root, [job.path for job in jobs])
    return PackReport(reports, time.perf_counter() - start, index)


def verify_pack(root: str | Path) -> int:
    """Check every shard's clips against their checksums and the index against the shards; returns the clip count.

    Raises:
        ShardError: A shard is missing or corrupt, or the index disagrees with a shard's table.
    """
    root = Path(root)
    index = _load_index(root)
    for number, name in enumerate(index["shard_files"]):
        path = root / name
        if not path.is_file():
            raise ShardError(f"{path}: shard missing; run tools/pack_audio.py again to rewrite it")
        verify_shard(path)
        with h5py.File(path, "r") as handle:
            table = _read_table(handle)
        rows = np.flatnonzero(index["shard"] == number)
        ids = index["clip_id"][rows]
        if not np.array_equal(np.sort(ids), np.sort(table["clip_id"])):
            raise ShardError(f"{root / INDEX_NAME}: lists other clips for {path} than the shard holds; run "
                             "tools/pack_audio.py again to rewrite the index")
        position = {clip_id: i for i, clip_id in enumerate(table["clip_id"])}
        for row in rows:
            own = position[index["clip_id"][row]]
            if any(index[name][row] != table[name][own] for name in _TABLE[1:]):
                raise ShardError(f"{root / INDEX_NAME}: the entry of {index['clip_id'][row].decode()!r} differs from "
                                 f"{path}; run tools/pack_audio.py again to rewrite the index")
    return len(index["clip_id"])


def _load_index(root: Path) -> dict[str, Any]:
    path = root / INDEX_NAME
    if not path.is_file():
        raise ShardError(f"{root}: no shard index ({INDEX_NAME}) in this folder; pack the audio with "
                         "tools/pack_audio.py, or read the files (DATA.STORAGE files)")
    try:
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("format") != FORMAT or int(handle.attrs.get("version", -1)) != VERSION:
                raise ShardError(f"{path}: not a playitback shard index of version {VERSION}; repack the audio with "
                                 "tools/pack_audio.py")
            index = {name: handle[name][()] for name in (*_TABLE, "shard")}
            index["shard_files"] = [name.decode() for name in handle["shard_files"][()]]
            index["storage"] = str(handle.attrs["storage"])
    except OSError as err:
        raise ShardError(f"{path}: cannot open as HDF5 ({err}); repack the audio with tools/pack_audio.py") from err
    return index


class ShardAudioReader:
    """Reads record segments from a pack (the reader interface of :class:`FileAudioReader`, over shards).

    The index is loaded once (numpy arrays, shared by forked DataLoader workers); shard files are opened on first use,
    in each process: a reader inherited through fork or pickled into a worker drops its parent's file descriptors and
    opens its own, keeping at most `max_open_files` open. pcm16 clips are read with one ``pread`` of the requested
    segment; encoded clips are read whole and decoded with soundfile. Other rates are resampled (soxr) like files.

    Args:
        root: The pack folder.
        sample_rate: Output rate in Hz.
        max_open_files: Shard files kept open per process.

    Raises:
        AudioReadError: The folder holds no valid pack.
    """

    def __init__(self, root: str | Path, sample_rate: int, max_open_files: int = 64) -> None:
        self.root = Path(root)
        self.sample_rate = sample_rate
        self.max_open_files = max_open_files
        try:
            index = _load_index(self.root)
        except ShardError as err:
            raise AudioReadError(str(err)) from err
        self.storage = index["storage"]
        self._ids = index["clip_id"]
        self._shard, self._offset, self._length = index["shard"], index["offset"], index["length"]
        self._frames, self._rate = index["frames"], index["sample_rate"]
        self._paths = [self.root / name for name in index["shard_files"]]
        self._unit = _payload_dtype(self.storage).itemsize
        self._data_offsets: dict[int, int] = {}
        self._files: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._ids)

    def has_audio(self, record: ClipRecord) -> bool:
        """Whether the pack holds the record's clip."""
        return self._find(record.source) is not None

    def cache_key(self, records: Sequence[ClipRecord]) -> list[object]:
        """What an existence check depends on: the pack and the modification time of its index."""
        return [str(self.root), mtime_ns(self.root / INDEX_NAME)]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = OrderedDict()
        return state

    def _find(self, source: str) -> int | None:
        key = source.encode()
        row = int(np.searchsorted(self._ids, key))
        return row if row < len(self._ids) and self._ids[row] == key else None

    def _read(self, shard: int, start: int, size: int, where: str) -> bytes:
        """`size` bytes from byte `start` of a shard's audio dataset."""
        if self._pid != os.getpid():  # inherited through fork: these descriptors are copies of the parent's
            self._pid = os.getpid()
            self.close()
        path = self._paths[shard]
        if shard not in self._files:
            try:
                if shard not in self._data_offsets:
                    self._data_offsets[shard] = _data_offset(path)
                self._files[shard] = os.open(path, os.O_RDONLY)
            except (OSError, ShardError) as err:
                raise AudioReadError(f"{where}: cannot open shard {path} ({err}); check the pack with "
                                     "tools/pack_audio.py --verify") from err
            if len(self._files) > self.max_open_files:
                os.close(self._files.popitem(last=False)[1])
        self._files.move_to_end(shard)
        data = os.pread(self._files[shard], size, self._data_offsets[shard] + start)
        if len(data) != size:
            raise AudioReadError(f"{where}: shard {path} is truncated ({len(data)} of {size} bytes); check the pack "
                                 "with tools/pack_audio.py --verify")
        return data

    def __call__(self, record: ClipRecord) -> np.ndarray:
        """The record's ``[start_s, stop_s)`` segment of clip ``record.source``, float32 ``[S]``."""
        row = self._find(record.source)
        if row is None:
            raise AudioReadError(f"{self.root}: clip {record.source!r} is not in this pack (not listed when it was "
                                 "packed, or unreadable then: see the pack's failures); pack it with "
                                 "tools/pack_audio.py")
        shard, offset, length = int(self._shard[row]), int(self._offset[row]), int(self._length[row])
        rate = int(self._rate[row])
        where = f"{self._paths[shard]} [{record.source}]"
        if self.storage == "pcm16":
            first, last = segment_frames(where, int(self._frames[row]), rate, record.start_s, record.stop_s)
            data = self._read(shard, (offset + first) * self._unit, (last - first) * self._unit, where)
            return finish_samples(where, pcm_to_float(np.frombuffer(data, dtype="<i2")), rate, self.sample_rate)
        data = self._read(shard, offset * self._unit, length * self._unit, where)
        samples, rate = decode_segment(io.BytesIO(data), where, record.start_s, record.stop_s)
        return finish_samples(where, samples, rate, self.sample_rate)

    def close(self) -> None:
        """Close the shard files open in this process (reopened on the next read)."""
        while self._files:
            os.close(self._files.popitem()[1])

    def __del__(self) -> None:
        if getattr(self, "_files", None):
            self.close()

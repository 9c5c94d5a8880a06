"""Packed shards: round trips against the source files, resumption, verification, the reader in workers, the storage
setting and tools/pack_audio.py.

References are independent of the shard code: soundfile's own int16 decode of each source file (what pcm16 must store
bit for bit), librosa's float decode (what every reader must return), and the shards' bytes read with plain h5py.
"""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import h5py
import librosa
import numpy as np
import pytest
import soundfile as sf

import pack_audio  # noqa: E402
from playitback.config import load_config
from playitback.data.audio_io import AudioReadError, FileAudioReader
from playitback.data.build import build_reader
from playitback.data.records import ClipRecord
from playitback.data.shards import INDEX_NAME, ShardAudioReader, ShardError, pack_clips, verify_pack

RATE = 16000
SEGMENTS = ((0.0, None), (0.3, 1.1), (0.8, 5.0))  # whole clip, inside, running past the end (clamped)


def _clip(rng: np.random.Generator, seconds: float, rate: int = RATE) -> np.ndarray:
    """Tones plus noise, quantised to 16 bits (so that 16-bit storage is exact)."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(t.size)
    return np.round(wave * 32767) / 32768


def _write_clips(folder: Path, ext: str, subtype: str | None, count: int = 7) -> list[str]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for number in range(count):
        name = f"clip_{number:02d}"
        sf.write(folder / f"{name}{ext}", _clip(rng, 1.0 + 0.25 * number), RATE, subtype=subtype)
        names.append(name)
    return names


def _records(names: list[str]) -> list[ClipRecord]:
    return [ClipRecord(uid=n, source=n, labels=(0,), start_s=start, stop_s=stop)
            for n in names for start, stop in SEGMENTS]


def _stored_samples(pack: Path, clip: str) -> np.ndarray:
    """A clip's int16 samples read from its shard with plain h5py (independent of the reader)."""
    with h5py.File(pack / INDEX_NAME, "r") as index:
        row = int(np.flatnonzero(index["clip_id"][()] == clip.encode())[0])
        shard = index["shard_files"][int(index["shard"][row])].decode()
        offset, length = int(index["offset"][row]), int(index["length"][row])
    with h5py.File(pack / shard, "r") as handle:
        return handle["audio"][offset:offset + length]


@pytest.mark.parametrize("storage", ["pcm16", "flac", "source"])
def test_shards_read_exactly_what_the_files_hold(tmp_path: Path, storage: str) -> None:
    names = _write_clips(tmp_path / "audio", ".wav", "PCM_16")
    files = FileAudioReader(tmp_path / "audio", ".wav", RATE)
    report = pack_clips(files, names, tmp_path / "pack", storage=storage, clips_per_shard=3, progress=False)
    assert (report.clips, len(report.shards), report.failures) == (7, 3, [])
    assert verify_pack(tmp_path / "pack") == 7
    shards = ShardAudioReader(tmp_path / "pack", RATE)
    for name in names:
        reference = librosa.load(tmp_path / "audio" / f"{name}.wav", sr=None)[0]
        whole = shards(ClipRecord(uid=name, source=name, labels=(0,)))
        np.testing.assert_array_equal(whole, reference)
        if storage == "pcm16":
            np.testing.assert_array_equal(_stored_samples(tmp_path / "pack", name),
                                          sf.read(tmp_path / "audio" / f"{name}.wav", dtype="int16")[0])
    for record in _records(names):
        np.testing.assert_array_equal(shards(record), files(record))


@pytest.mark.parametrize("ext, subtype", [(".flac", "PCM_16"), (".ogg", "VORBIS"), (".mp3", "MPEG_LAYER_III")])
def test_compressed_sources_decode_exactly_like_the_files(tmp_path: Path, ext: str, subtype: str) -> None:
    names = _write_clips(tmp_path / "audio", ext, subtype, count=3)
    files = FileAudioReader(tmp_path / "audio", ext, RATE)
    pack_clips(files, names, tmp_path / "pack", storage="source", clips_per_shard=2, progress=False)
    shards = ShardAudioReader(tmp_path / "pack", RATE)
    for name in names:  # the stored bytes are the file's bytes
        stored = _stored_samples(tmp_path / "pack", name)
        assert stored.tobytes() == (tmp_path / "audio" / f"{name}{ext}").read_bytes()
    for record in _records(names):
        np.testing.assert_array_equal(shards(record), files(record))


def test_other_rates_and_stereo_are_converted_like_the_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "stereo_22k.wav", np.stack([_clip(rng, 1.5, 22050), _clip(rng, 1.5, 22050)], 1),
             22050, subtype="PCM_16")
    files = FileAudioReader(tmp_path / "audio", ".wav", RATE)
    record = ClipRecord(uid="stereo_22k", source="stereo_22k", labels=(0,))
    for storage in ("pcm16", "source"):
        pack_clips(files, ["stereo_22k"], tmp_path / storage, storage=storage, progress=False)
        out = ShardAudioReader(tmp_path / storage, RATE)(record)
        assert out.shape == files(record).shape == (24000,)
        # pcm16 stores the converted clip as 16-bit samples: off by at most half a quantisation step.
        tolerance = 0.5 / 32768 + 1e-7 if storage == "pcm16" else 0.0
        np.testing.assert_allclose(out, files(record), rtol=0, atol=tolerance)
    # A pcm16 pack read at another rate is resampled on reading, as a file is.
    at_8k = ShardAudioReader(tmp_path / "pcm16", 8000)(record)
    assert at_8k.shape == (12000,)


def test_real_clips_round_trip(real_clips: list[Path], tmp_path: Path) -> None:
    files = FileAudioReader(real_clips[0].parent, ".wav", RATE)
    names = [clip.stem for clip in real_clips]
    for storage in ("pcm16", "flac", "source"):
        pack_clips(files, names, tmp_path / storage, storage=storage, clips_per_shard=2, progress=False)
        shards = ShardAudioReader(tmp_path / storage, RATE)
        for clip in real_clips:
            record = ClipRecord(uid=clip.stem, source=clip.stem, labels=(0,), start_s=2.0, stop_s=7.5)
            np.testing.assert_array_equal(shards(record), files(record))
            whole = shards(ClipRecord(uid=clip.stem, source=clip.stem, labels=(0,)))
            np.testing.assert_array_equal(whole, librosa.load(clip, sr=None)[0])
            if storage == "pcm16":
                np.testing.assert_array_equal(_stored_samples(tmp_path / storage, clip.stem),
                                              sf.read(clip, dtype="int16")[0])
    sizes = {s: sum(f.stat().st_size for f in (tmp_path / s / "shards").iterdir()) for s in ("pcm16", "flac")}
    assert sizes["flac"] < sizes["pcm16"]


def test_a_rerun_keeps_complete_shards_and_rewrites_the_rest(tmp_path: Path) -> None:
    names = _write_clips(tmp_path / "audio", ".wav", "PCM_16")
    files = FileAudioReader(tmp_path / "audio", ".wav", RATE)
    pack_clips(files, names, tmp_path / "pack", clips_per_shard=3, progress=False)
    with h5py.File(tmp_path / "pack" / INDEX_NAME, "r") as index:
        first_index = {key: index[key][()] for key in ("clip_id", "shard", "offset", "crc32")}
    shard_files = sorted((tmp_path / "pack" / "shards").glob("*.h5"))
    shard_files[1].unlink()  # as if the run had stopped while writing it
    (tmp_path / "pack" / "shards" / "shard_00001.h5.partial").write_bytes(b"half")
    again = pack_clips(files, names, tmp_path / "pack", clips_per_shard=3, workers=2, progress=False)
    assert [s.skipped for s in again.shards] == [True, False, True]
    assert again.written_clips == 3 and again.clips == 7
    assert not list((tmp_path / "pack" / "shards").glob("*.partial"))
    with h5py.File(tmp_path / "pack" / INDEX_NAME, "r") as index:
        for key, values in first_index.items():
            np.testing.assert_array_equal(index[key][()], values)
    # Another storage is another plan: every shard is rewritten.
    assert not any(s.skipped for s in pack_clips(files, names, tmp_path / "pack", storage="flac", clips_per_shard=3,
                                                 progress=False).shards)


def test_verification_finds_a_corrupt_byte(tmp_path: Path) -> None:
    names = _write_clips(tmp_path / "audio", ".wav", "PCM_16", count=4)
    pack_clips(FileAudioReader(tmp_path / "audio", ".wav", RATE), names, tmp_path / "pack", clips_per_shard=2,
               progress=False)
    shard = tmp_path / "pack" / "shards" / "shard_00001.h5"
    with h5py.File(shard, "r") as handle:
        where = handle["audio"].id.get_offset() + 2 * int(handle["offset"][1]) + 100
    with open(shard, "r+b") as raw:
        raw.seek(where)
        byte = raw.read(1)
        raw.seek(where)
        raw.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ShardError, match="clip 'clip_03' does not match its checksum"):
        verify_pack(tmp_path / "pack")
    assert pack_audio.main(["--verify", str(tmp_path / "pack")]) == 1


def test_unreadable_clips_are_reported_and_left_out(tmp_path: Path) -> None:
    names = _write_clips(tmp_path / "audio", ".wav", "PCM_16", count=3)
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF not audio")
    files = FileAudioReader(tmp_path / "audio", ".wav", RATE)
    report = pack_clips(files, [*names, "broken", "missing"], tmp_path / "pack", progress=False)
    assert report.clips == 3 and sorted(c for c, _ in report.failures) == ["broken", "missing"]
    assert "cannot decode as audio" in dict(report.failures)["broken"]
    shards = ShardAudioReader(tmp_path / "pack", RATE)
    assert shards.has_audio(ClipRecord(uid="a", source="clip_00", labels=(0,)))
    assert not shards.has_audio(ClipRecord(uid="b", source="missing", labels=(0,)))
    with pytest.raises(AudioReadError, match="'missing' is not in this pack"):
        shards(ClipRecord(uid="missing", source="missing", labels=(0,)))
    # A rerun keeps the shard and still reports its failures.
    assert len(pack_clips(files, [*names, "broken", "missing"], tmp_path / "pack", progress=False).failures) == 2


def _read_in_child(reader: ShardAudioReader, record: ClipRecord, queue: multiprocessing.Queue) -> None:
    queue.put((os.getpid(), reader._pid, reader(record), reader._pid))


def test_a_forked_worker_opens_its_own_files(tmp_path: Path) -> None:
    names = _write_clips(tmp_path / "audio", ".wav", "PCM_16", count=2)
    pack_clips(FileAudioReader(tmp_path / "audio", ".wav", RATE), names, tmp_path / "pack", progress=False)
    reader = ShardAudioReader(tmp_path / "pack", RATE)
    record = ClipRecord(uid="clip_01", source="clip_01", labels=(0,))
    expected = reader(record)  # the parent has the shard open now
    parent_files = dict(reader._files)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(reader, record, queue))
    child.start()
    pid, pid_before, samples, pid_after = queue.get(timeout=60)
    child.join()
    assert pid_before == os.getpid() and pid_after == pid != os.getpid()
    np.testing.assert_array_equal(samples, expected)
    assert reader._files == parent_files  # the child's close did not touch the parent's descriptors
    np.testing.assert_array_equal(reader(record), expected)


def test_storage_setting_picks_the_reader(tmp_path: Path) -> None:
    names = _write_clips(tmp_path / "audio", ".wav", "PCM_16", count=2)
    pack_clips(FileAudioReader(tmp_path / "audio", ".wav", RATE), names, tmp_path / "pack", progress=False)

    def reader(audio: Path, storage: str):
        cfg = load_config("configs/Demo/PlayItBackX2.yaml", ["VGGSOUND.AUDIO_DATA_DIR", str(audio),
                                                              "DATA.STORAGE", storage])
        return build_reader(cfg, "train")

    assert isinstance(reader(tmp_path / "pack", "auto"), ShardAudioReader)
    assert isinstance(reader(tmp_path / "pack", "shards"), ShardAudioReader)
    assert isinstance(reader(tmp_path / "audio", "auto"), FileAudioReader)
    assert isinstance(reader(tmp_path / "pack", "files"), FileAudioReader)
    with pytest.raises(AudioReadError, match="DATA.STORAGE is shards but this is not a pack folder.*pack_audio.py"):
        reader(tmp_path / "audio", "shards")


def test_pack_audio_tool_packs_the_lists_of_a_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine_utils import make_tiny_dataset

    data = make_tiny_dataset(tmp_path / "data")
    opts = ["VGGSOUND.AUDIO_DATA_DIR", str(data / "audio"), "VGGSOUND.ANNOTATIONS_DIR", str(data / "annotations")]
    code = pack_audio.main(["--cfg", "configs/Demo/PlayItBackX2.yaml", "--out", str(tmp_path / "pack"),
                            "--storage", "flac", "--clips-per-shard", "10", "--no-progress", *opts])
    out = capsys.readouterr().out
    assert code == 0 and "36 clips in 4 shards" in out and "clips/s" in out
    assert f"VGGSOUND.AUDIO_DATA_DIR {tmp_path / 'pack'}" in out
    assert len(ShardAudioReader(tmp_path / "pack", RATE)) == 36  # 24 training + 12 test clips
    assert pack_audio.main(["--verify", str(tmp_path / "pack")]) == 0

"""Audio decoding: soundfile files and the EPIC-KITCHENS HDF5 reader."""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import h5py
import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from playitback.data.audio_io import AudioReadError, FileAudioReader, Hdf5AudioReader, read_audio_file
from playitback.data.records import ClipRecord

RATE = 16000


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))


def _tones(rng: np.random.Generator, num: int, rate: int) -> np.ndarray:
    """Sum of sines below 3 kHz, ``[num]``: far from every Nyquist here, so resamplers must agree closely."""
    t = np.arange(num) / rate
    freqs = rng.uniform(50, 3000, 8)
    return (0.1 * np.sin(2 * np.pi * freqs[:, None] * t + rng.uniform(0, 6, 8)[:, None])).sum(0).astype(np.float32)


# ---- real clips --------------------------------------------------------------------------------------------------


def test_real_clips_match_librosa(real_clips: list[Path]) -> None:
    for clip in real_clips:
        audio = read_audio_file(clip, RATE)
        reference, rate = librosa.load(clip, sr=None, mono=True)
        assert rate == RATE and audio.dtype == np.float32
        np.testing.assert_array_equal(audio, reference)
        assert read_audio_file(clip, RATE, 0.0, 10.0).shape == (160000,)


def test_real_clip_resampled(real_clips: list[Path]) -> None:
    native = read_audio_file(real_clips[0], RATE, 0.0, 10.0)
    for rate, (up, down) in ((8000, (1, 2)), (24000, (3, 2))):
        audio = read_audio_file(real_clips[0], rate, 0.0, 10.0)
        assert audio.shape == (rate * 10,) and audio.dtype == np.float32
        # An independent polyphase resampler agrees to within the differences of the two anti-alias filters.
        assert _relative_error(audio, scipy.signal.resample_poly(native, up, down)) < 0.03


def test_stereo_is_downmixed_by_mean(real_clips: list[Path], tmp_path: Path) -> None:
    left = read_audio_file(real_clips[0], RATE, 0.0, 10.0)
    right = read_audio_file(real_clips[1], RATE, 0.0, 10.0)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    np.testing.assert_allclose(read_audio_file(path, RATE), (left + right) / 2, rtol=0, atol=1e-7)


def test_segment_seek_equals_slicing(real_clips: list[Path], tmp_path: Path) -> None:
    full = read_audio_file(real_clips[2], RATE)
    np.testing.assert_array_equal(read_audio_file(real_clips[2], RATE, 1.25, 3.5), full[20000:56000])
    np.testing.assert_array_equal(read_audio_file(real_clips[2], RATE, 9.0), full[144000:])
    np.testing.assert_array_equal(read_audio_file(real_clips[2], RATE, 9.5, 60.0), full[152000:])  # stop clamped
    flac = tmp_path / "clip.flac"
    sf.write(flac, full, RATE, subtype="PCM_16")
    np.testing.assert_array_equal(read_audio_file(flac, RATE, 1.25, 3.5), full[20000:56000])
    with pytest.raises(AudioReadError, match=f"{flac}: segment \\[12.0, None\\) s is empty or outside the audio"):
        read_audio_file(flac, RATE, 12.0)


def test_file_reader_paths_and_segments(tmp_path: Path) -> None:
    audio = np.sin(np.arange(24000) * 0.01).astype(np.float32) * 0.5
    (tmp_path / "dog, barking").mkdir()
    sf.write(tmp_path / "dog, barking" / "a.b_000001.flac", audio, 24000, subtype="PCM_24")
    record = ClipRecord("a.b_000001", "dog, barking/a.b_000001", (0,), start_s=0.25, stop_s=0.75)
    for extension in ("flac", ".flac"):
        reader = FileAudioReader(tmp_path, extension, 16000)
        assert reader.path(record) == tmp_path / "dog, barking" / "a.b_000001.flac"
        segment = reader(record)
        assert segment.shape == (8000,)
        expected = audio[6000:18000]
        assert _relative_error(segment, scipy.signal.resample_poly(expected, 2, 3)) < 0.01


# ---- bad files ---------------------------------------------------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("these are not samples\n" * 20)
    no_frames = tmp_path / "no_frames.wav"
    sf.write(no_frames, np.zeros(0, dtype=np.float32), RATE)
    good = np.random.default_rng(0).uniform(-0.5, 0.5, RATE).astype(np.float32)
    flac = tmp_path / "whole.flac"
    sf.write(flac, good, RATE, subtype="PCM_16")
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    nan = tmp_path / "nan.wav"
    good[100] = np.nan
    sf.write(nan, good, RATE, subtype="FLOAT")
    return {
        "missing": (tmp_path / "missing.wav", "audio file not found"),
        "empty": (empty, "cannot decode as audio"),
        "text": (text, "cannot decode as audio"),
        "no_frames": (no_frames, "no audio samples after decoding"),
        "truncated": (truncated, "^short: .* could be decoded"),
        "nan": (nan, "NaN or infinite samples"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "text", "no_frames", "truncated", "nan"])
def test_bad_files_raise_naming_the_file(tmp_path: Path, case: str) -> None:
    path, problem = _bad_files(tmp_path)[case]
    with pytest.raises(AudioReadError, match=problem) as info:
        read_audio_file(path, RATE)
    assert str(info.value).removeprefix("short: ").startswith(str(path))


# ---- HDF5 --------------------------------------------------------------------------------------------------------


@pytest.fixture()
def hdf5_file(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    data = {
        "P01_01": rng.uniform(-0.5, 0.5, 3 * 16000).astype(np.float32),
        "P01_02": _tones(rng, 3 * 24000, 24000),
        "P01_03": (rng.uniform(-0.5, 0.5, 16000) * 32768).astype(np.int16),
    }
    path = tmp_path / "audio.hdf5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("P01_01", data=data["P01_01"]).attrs["sample_rate"] = 16000
        handle.create_dataset("P01_02", data=data["P01_02"]).attrs["sample_rate"] = 24000
        handle.create_dataset("P01_03", data=data["P01_03"])
        handle.create_dataset("P01_04", data=np.full(16000, np.inf, dtype=np.float32)).attrs["sample_rate"] = 16000
        handle.create_dataset("two_d", data=np.zeros((2, 10), dtype=np.float32))
    return path, data


def test_hdf5_slice_and_resample(hdf5_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, data = hdf5_file
    reader = Hdf5AudioReader(path, 16000)
    segment = reader(ClipRecord("P01_01_0", "P01_01", (0, 1), start_s=0.5, stop_s=1.25))
    np.testing.assert_array_equal(segment, data["P01_01"][8000:20000])
    # A 24 kHz recording: the timestamps are converted at 24 kHz, then the slice is resampled to 16 kHz.
    resampled = reader(ClipRecord("P01_02_0", "P01_02", (0, 1), start_s=0.5, stop_s=1.25))
    assert resampled.shape == (12000,)
    assert _relative_error(resampled, scipy.signal.resample_poly(data["P01_02"][12000:30000], 2, 3)) < 0.02
    np.testing.assert_array_equal(reader(ClipRecord("a", "P01_01", (0, 0), start_s=2.5)), data["P01_01"][40000:])


def test_hdf5_missing_rate_warns_once_and_int_pcm_is_scaled(hdf5_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, data = hdf5_file
    reader = Hdf5AudioReader(path, 16000)
    with pytest.warns(UserWarning, match="no 'sample_rate' attribute.*assuming 16000 Hz"):
        first = reader(ClipRecord("a", "P01_03", (0, 0), start_s=0.0, stop_s=0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader(ClipRecord("b", "P01_03", (0, 0), start_s=0.5, stop_s=1.0))
    np.testing.assert_array_equal(first, data["P01_03"][:8000].astype(np.float32) / 32768)


def test_hdf5_file_level_rate(tmp_path: Path) -> None:
    path = tmp_path / "file_rate.hdf5"
    samples = _tones(np.random.default_rng(2), 8000, 8000)
    with h5py.File(path, "w") as handle:
        handle.attrs["sample_rate"] = 8000
        handle.create_dataset("P02_01", data=samples)
    segment = Hdf5AudioReader(path, 16000)(ClipRecord("a", "P02_01", (0, 0)))
    assert segment.shape == (16000,)
    assert _relative_error(segment, scipy.signal.resample_poly(samples, 2, 1)) < 0.02


def test_hdf5_errors(hdf5_file: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    path, _ = hdf5_file
    reader = Hdf5AudioReader(path, 16000)
    with pytest.raises(AudioReadError, match=f"{path}: no dataset for recording 'P09_99'"):
        reader(ClipRecord("a", "P09_99", (0, 0)))
    with pytest.raises(AudioReadError, match="expected a 1-D audio dataset"):
        reader(ClipRecord("a", "two_d", (0, 0)))
    with pytest.raises(AudioReadError, match=f"{path} \\[P01_04\\]: the audio holds NaN or infinite samples"):
        reader(ClipRecord("a", "P01_04", (0, 0)))
    with pytest.raises(AudioReadError, match="segment \\[4.0, 5.0\\) s is empty or outside the audio"):
        reader(ClipRecord("a", "P01_01", (0, 0), start_s=4.0, stop_s=5.0))
    with pytest.raises(AudioReadError, match="HDF5 audio file not found"):
        Hdf5AudioReader(tmp_path / "missing.hdf5", 16000)
    not_hdf5 = tmp_path / "fake.hdf5"
    not_hdf5.write_text("nope")
    with pytest.raises(AudioReadError, match=f"{not_hdf5}: cannot open as HDF5"):
        Hdf5AudioReader(not_hdf5, 16000)(ClipRecord("a", "P01_01", (0, 0)))


def test_hdf5_reader_pickles_without_its_handle(hdf5_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, data = hdf5_file
    reader = Hdf5AudioReader(path, 16000)
    record = ClipRecord("a", "P01_01", (0, 0), start_s=1.0, stop_s=1.5)
    before = pickle.loads(pickle.dumps(reader))  # as DataLoader workers receive it
    expected = reader(record)
    after = pickle.loads(pickle.dumps(reader))  # an opened reader still pickles
    np.testing.assert_array_equal(before(record), expected)
    np.testing.assert_array_equal(after(record), data["P01_01"][16000:24000])
    reader.close()
    np.testing.assert_array_equal(reader(record), expected)

"""tools/extract_audio.py and tools/wav_to_hdf5.py end to end on tiny generated files.

The reference is hand-computed: a stereo sine pair whose channel mean is a known sine, compared after conversion with
the analytic sine at the output rate.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

import extract_audio  # noqa: E402
import wav_to_hdf5  # noqa: E402
from playitback.data.audio_io import Hdf5AudioReader
from playitback.data.records import ClipRecord

FREQ = 440.0


def _stereo_sine(path: Path, rate: int, seconds: float, subtype: str = "PCM_16") -> None:
    """Left 0.5 sin, right 0.3 sin: the channel mean is 0.4 sin(2 pi 440 t)."""
    t = np.arange(int(rate * seconds)) / rate
    wave = np.sin(2 * np.pi * FREQ * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([0.5 * wave, 0.3 * wave], axis=1), rate, subtype=subtype)


def _expected_mono(rate: int, num: int) -> np.ndarray:
    return 0.4 * np.sin(2 * np.pi * FREQ * np.arange(num) / rate)


def _assert_sine(path: Path, rate: int, seconds: float) -> None:
    data, out_rate = sf.read(path, dtype="float64")
    assert out_rate == rate and data.ndim == 1
    assert abs(len(data) - rate * seconds) <= 1
    # Resampling filters ring at the clip edges; the interior must be the analytic sine (PCM16 + filter tolerance).
    edge = rate // 50
    np.testing.assert_allclose(data[edge:-edge], _expected_mono(rate, len(data))[edge:-edge], atol=3e-3)


def test_converts_folders_keeping_layout_and_resamples(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _stereo_sine(src / "a" / "one.wav", 44100, 0.5)
    _stereo_sine(src / "two.flac", 22050, 0.4, subtype="PCM_24")
    out = tmp_path / "out"
    assert extract_audio.main([str(src), "--out", str(out), "--jobs", "1", "--no-progress"]) == 0
    _assert_sine(out / "a" / "one.wav", 16000, 0.5)
    _assert_sine(out / "two.wav", 16000, 0.4)
    assert sf.info(out / "a" / "one.wav").channels == 1


def test_flac_output_and_parallel_jobs(tmp_path: Path) -> None:
    for index in range(3):
        _stereo_sine(tmp_path / "src" / f"clip{index}.wav", 32000, 0.3)
    out = tmp_path / "out"
    code = extract_audio.main([str(tmp_path / "src"), "--out", str(out), "--format", "flac", "--jobs", "2",
                               "--sample-rate", "24000", "--no-progress"])
    assert code == 0
    for index in range(3):
        assert sf.info(out / f"clip{index}.flac").format == "FLAC"
        _assert_sine(out / f"clip{index}.flac", 24000, 0.3)


def test_resume_skips_complete_outputs_and_redoes_broken_ones(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _stereo_sine(tmp_path / "src" / f"{name}.wav", 16000, 0.2)
    pairs = extract_audio.plan_outputs(extract_audio.find_media([tmp_path / "src"]), tmp_path / "out", "wav")
    first = extract_audio.extract_all(pairs, progress=False)
    assert (first.converted, first.skipped, first.failures) == (2, 0, [])
    (tmp_path / "out" / "b.wav").write_bytes(b"RIFF\x00\x00")  # an output cut short by a crash
    second = extract_audio.extract_all(pairs, progress=False)
    assert (second.converted, second.skipped) == (1, 1)
    assert extract_audio.is_complete(tmp_path / "out" / "b.wav")
    assert not list((tmp_path / "out").glob(".*.part"))


def test_bad_inputs_are_reported_and_the_rest_converted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    _stereo_sine(src / "good.wav", 16000, 0.2)
    (src / "empty.wav").write_bytes(b"")
    (src / "garbage.wav").write_bytes(b"this is not audio" * 10)
    (src / "video.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    code = extract_audio.main([str(src), "--out", str(tmp_path / "out"), "--jobs", "1", "--no-progress",
                               "--ffmpeg", sys.executable])  # an executable that is not ffmpeg: a per-file failure
    err = capsys.readouterr().err
    assert code == 1
    assert (tmp_path / "out" / "good.wav").is_file()
    assert "empty.wav: the file is empty" in err
    assert "3 file(s) failed" in err and "garbage.wav" in err and "video.mp4: ffmpeg failed" in err


def test_missing_ffmpeg_gives_a_clear_error(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    with pytest.raises(extract_audio.ExtractError, match="ffmpeg was not found on PATH; install ffmpeg"):
        extract_audio.convert_file(video, tmp_path / "clip.wav", ffmpeg=None)
    with pytest.raises(extract_audio.ExtractError, match="not an executable"):
        extract_audio.find_ffmpeg(str(tmp_path / "no-such-ffmpeg"))


def test_folder_without_media_and_colliding_outputs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(extract_audio.ExtractError, match="no media files"):
        extract_audio.find_media([tmp_path / "empty"])
    (tmp_path / "src").mkdir()
    for name in ("a.mp4", "a.mkv"):
        (tmp_path / "src" / name).write_bytes(b"x")
    with pytest.raises(extract_audio.ExtractError, match="would both be written"):
        extract_audio.plan_outputs(extract_audio.find_media([tmp_path / "src"]), tmp_path / "out", "wav")


@pytest.mark.skipif(shutil.which("ffmpeg") is None,
                    reason="ffmpeg is not installed on this machine: the video path of extract_audio cannot run")
def test_video_through_ffmpeg(tmp_path: Path) -> None:
    wav = tmp_path / "tone.wav"
    _stereo_sine(wav, 48000, 0.5)
    video = tmp_path / "src" / "tone.mkv"
    video.parent.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "flac", str(video)], check=True)
    assert extract_audio.main([str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    _assert_sine(tmp_path / "out" / "tone.wav", 16000, 0.5)


@pytest.mark.skipif(shutil.which("ffmpeg") is None,
                    reason="ffmpeg is not installed on this machine: the video path of extract_audio cannot run")
def test_mp4_with_a_video_stream_and_lossy_audio(tmp_path: Path) -> None:
    """A real video file (MPEG-4 video, AAC audio at 44.1 kHz, as the datasets' YouTube clips): the audio track comes
    out as 16 kHz mono with the tone's frequency and the clip's length (AAC adds its encoder delay, ~20 ms)."""
    video = tmp_path / "src" / "clip.mp4"
    video.parent.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=duration=2:size=160x120:rate=10", "-f", "lavfi", "-i",
                    f"sine=frequency={FREQ}:duration=2:sample_rate=44100", "-c:v", "mpeg4", "-c:a", "aac",
                    "-shortest", str(video)], check=True)
    assert extract_audio.main([str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    data, rate = sf.read(tmp_path / "out" / "clip.wav", dtype="float64")
    assert rate == 16000 and data.ndim == 1
    assert abs(len(data) / rate - 2.0) < 0.05
    spectrum = np.abs(np.fft.rfft(data[4000:20000]))
    assert np.argmax(spectrum) * rate / 16000 == pytest.approx(FREQ, abs=1.0)


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_wav_to_hdf5_round_trip_through_the_reader(tmp_path: Path, dtype: str) -> None:
    _stereo_sine(tmp_path / "wav" / "P01_01.wav", 24000, 0.5)
    _stereo_sine(tmp_path / "wav" / "sub" / "P01_02.flac", 16000, 0.3)
    out = tmp_path / "audio.hdf5"
    assert wav_to_hdf5.main([str(tmp_path / "wav"), "--out", str(out), "--dtype", dtype, "--no-progress"]) == 0
    with h5py.File(out, "r") as handle:
        assert set(handle) == {"P01_01", "P01_02"}
        assert handle["P01_01"].dtype == np.dtype(dtype) and handle["P01_01"].ndim == 1
        assert handle["P01_01"].attrs["sample_rate"] == 24000 and handle["P01_02"].attrs["sample_rate"] == 16000
    reader = Hdf5AudioReader(out, 24000)
    segment = reader(ClipRecord("x", "P01_01", (0,), 0.1, 0.3))
    expected = _expected_mono(24000, 12000)[2400:7200]
    np.testing.assert_allclose(segment, expected, atol=1e-4 if dtype == "float32" else 2e-4)
    reader.close()


def test_wav_to_hdf5_resumes_and_reports_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for name in ("v1", "v2"):
        _stereo_sine(tmp_path / "wav" / f"{name}.wav", 16000, 0.2)
    (tmp_path / "wav" / "broken.wav").write_bytes(b"not audio")
    out = tmp_path / "audio.hdf5"
    with h5py.File(out, "w") as handle:
        handle.create_dataset("v2", data=np.zeros(5, np.float32))  # interrupted: no sample_rate attribute yet
    code = wav_to_hdf5.main([str(tmp_path / "wav"), "--out", str(out), "--sample-rate", "8000", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1 and "broken.wav" in captured.err
    assert "2 written, 0 already present, 1 failed" in captured.out
    with h5py.File(out, "r") as handle:
        assert handle["v2"].shape == (1600,) and handle["v2"].attrs["sample_rate"] == 8000
        first = handle["v1"][:]
    os.remove(tmp_path / "wav" / "broken.wav")
    summary = wav_to_hdf5.pack(wav_to_hdf5.find_audio([tmp_path / "wav"]), out, progress=False)
    assert (summary.written, summary.skipped) == (0, 2)
    with h5py.File(out, "r") as handle:
        np.testing.assert_array_equal(handle["v1"][:], first)

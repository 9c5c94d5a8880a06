"""The playback pyramid against the straightforward librosa recipe (bench/librosa_reference.py)."""
from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from bench.librosa_reference import log_mel_reference, playback_pyramid_reference
from playitback.data.spectrogram import PlaybackPyramid, playback_hops, playback_pyramid

SR = 16000
VGG_SAMPLES = 80000  # 5 s
TOLERANCE = 1e-3  # max abs difference in log-mel, float32


def _crop(y: np.ndarray, num_samples: int) -> np.ndarray:
    """First num_samples of y, zero-padded when y is shorter."""
    return np.pad(y[:num_samples], (0, max(0, num_samples - len(y))))


def _max_diff(ours: list[torch.Tensor], reference: list[np.ndarray]) -> float:
    return max(float(np.abs(o.numpy().astype(np.float64) - r).max()) for o, r in zip(ours, reference))


@pytest.fixture(scope="module")
def clips(real_clips: list[Path]) -> list[np.ndarray]:
    """The four real 16 kHz clips, float32 mono [S]."""
    out = []
    for path in real_clips:
        y, sr = sf.read(path, dtype="float32")
        assert sr == SR
        out.append(y)
    return out


@pytest.mark.parametrize(("num_samples", "hops"), [
    (80000, [200, 100, 67, 50]),  # VGG-Sound 5 s
    (160000, [400, 200, 133, 100]),  # AudioSet 10 s
    (31984, [80, 40, 27, 20]),  # EPIC-KITCHENS 1.999 s
])
def test_hops_and_exact_frame_counts(num_samples: int, hops: list[int]) -> None:
    assert playback_hops(num_samples, 4) == hops
    wave = torch.randn(2, num_samples, generator=torch.Generator().manual_seed(0))
    out = playback_pyramid(wave, SR, 4)
    assert [tuple(p.shape) for p in out] == [(2, 400 * (i + 1), 128) for i in range(4)]
    assert [tuple(p.shape) for p in playback_pyramid(wave[0], SR, 4)] == [(400 * (i + 1), 128) for i in range(4)]


def test_mel_matrix_equals_librosa() -> None:
    expected = librosa.filters.mel(sr=SR, n_fft=2048, n_mels=128, fmin=0.0, fmax=SR / 2, htk=True, norm=None)
    np.testing.assert_array_equal(PlaybackPyramid(SR, 1).mel_matrix().numpy(), expected.astype(np.float64))


def test_real_clips_per_item_and_batched_match_librosa(clips: list[np.ndarray]) -> None:
    crops = [_crop(y, VGG_SAMPLES) for y in clips]
    batched = playback_pyramid(torch.from_numpy(np.stack(crops)), SR, 4)
    for b, crop in enumerate(crops):
        reference = playback_pyramid_reference(crop, SR, 4)
        per_item = playback_pyramid(torch.from_numpy(crop), SR, 4)
        assert [r.shape[0] for r in reference] == [400, 800, 1200, 1600]
        assert _max_diff(per_item, reference) <= TOLERANCE
        assert _max_diff([p[b] for p in batched], reference) <= TOLERANCE
        for single, batch in zip(per_item, batched):
            torch.testing.assert_close(single, batch[b], rtol=0, atol=1e-5)


@pytest.mark.parametrize("scaling", ["fixed", "hop"])
def test_window_scaling_matches_librosa(clips: list[np.ndarray], scaling: str) -> None:
    """configs/Small's front-end (80 ms window, T0 = 128, 5 s) and the demo's shared-frame hops (80 ms, T0 = 400):
    "hop" shortens playback i's window to 80 / (i + 1) ms and must not share frames across different windows."""
    for frames0, playbacks in ((128, 3), (400, 4)):
        crop = _crop(clips[0], VGG_SAMPLES)
        ours = playback_pyramid(torch.from_numpy(crop), SR, playbacks, frames0=frames0, window_ms=80.0,
                                window_scaling=scaling)
        reference = playback_pyramid_reference(crop, SR, playbacks, frames0, 80.0, window_scaling=scaling)
        assert _max_diff(ours, reference) <= TOLERANCE
    fixed = playback_pyramid(torch.from_numpy(crop), SR, 3, frames0=128, window_ms=80.0)
    hop = playback_pyramid(torch.from_numpy(crop), SR, 3, frames0=128, window_ms=80.0, window_scaling="hop")
    assert torch.equal(fixed[0], hop[0]) and not torch.allclose(fixed[2], hop[2], atol=0.1)
    assert PlaybackPyramid(SR, 3, window_ms=80.0, window_scaling="hop").win_lengths == [1280, 640, 427]


def test_float64_matches_librosa_to_rounding(clips: list[np.ndarray]) -> None:
    """In float64 the recipe itself is checked, free of float32 FFT rounding."""
    crop = _crop(clips[0], VGG_SAMPLES).astype(np.float64)
    ours = playback_pyramid(torch.from_numpy(crop), SR, 4)
    assert all(p.dtype == torch.float64 for p in ours)
    assert _max_diff(ours, playback_pyramid_reference(crop, SR, 4)) <= 1e-8


def test_stereo_downmix_and_odd_length(clips: list[np.ndarray]) -> None:
    length = min(len(clips[0]), len(clips[1]))
    stereo = np.stack([clips[0][:length], clips[1][:length]])
    mono = librosa.to_mono(stereo)
    odd = _crop(mono, VGG_SAMPLES - 37)  # hops are no longer exact divisors of the length
    ours = playback_pyramid(torch.from_numpy(stereo).mean(0)[: len(odd)].contiguous(), SR, 4)
    reference = playback_pyramid_reference(odd, SR, 4)
    assert [p.shape[0] for p in ours] == [400, 800, 1200, 1600]
    assert _max_diff(ours, reference) <= TOLERANCE


@pytest.mark.parametrize("num_samples", [160000, 31984])
def test_audioset_and_epic_crops_match_librosa(clips: list[np.ndarray], num_samples: int) -> None:
    crop = _crop(clips[2], num_samples)
    ours = playback_pyramid(torch.from_numpy(crop), SR, 4)
    reference = playback_pyramid_reference(crop, SR, 4)
    assert [r.shape[0] for r in reference] == [400, 800, 1200, 1600]
    assert _max_diff(ours, reference) <= TOLERANCE


def test_odd_window_length_and_other_rate() -> None:
    """22.05 kHz and 20 ms give a 441-sample window: checks the window centring for odd lengths."""
    sr = 22050
    y = np.random.default_rng(0).standard_normal(sr).astype(np.float64) * 0.1
    ours = PlaybackPyramid(sr, 2, frames0=50)(torch.from_numpy(y))
    hops = playback_hops(len(y), 2, 50)
    for i, (playback, hop) in enumerate(zip(ours, hops)):
        padded = np.pad(y, (0, max(0, (50 * (i + 1) - 1) * hop - len(y))))
        reference = log_mel_reference(padded, sr, hop)[: 50 * (i + 1)]
        np.testing.assert_allclose(playback.numpy(), reference, rtol=0, atol=1e-8)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="too short"):
        playback_pyramid(torch.zeros(100), SR, 2)
    with pytest.raises(ValueError, match="int16"):
        playback_pyramid(torch.zeros(80000, dtype=torch.int16), SR, 2)
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        playback_pyramid(torch.zeros(2, 2, 80000), SR, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    wave = torch.randn(3, VGG_SAMPLES, generator=torch.Generator().manual_seed(0)) * 0.1
    cpu = playback_pyramid(wave, SR, 3)
    gpu = playback_pyramid(wave.cuda(), SR, 3)
    for c, g in zip(cpu, gpu):
        assert g.device.type == "cuda"
        torch.testing.assert_close(g.cpu(), c, rtol=0, atol=1e-3)

"""The straightforward librosa implementation of the log-mel recipe, used as the reference by tests and benchmarks.

It follows ORIGINAL.md section 2.4 line by line (one librosa STFT per playback, numpy mel product); the package's
torch front-end (``playitback.data.spectrogram``) is checked and timed against it. Not part of the package.
"""
from __future__ import annotations

import functools

import librosa
import numpy as np


def log_mel_reference(y: np.ndarray, sr: int, hop: int, window_ms: float = 20.0, n_fft: int = 2048,
                      n_mels: int = 128) -> np.ndarray:
    """Log-mel spectrogram of one waveform with librosa.

    Args:
        y: mono waveform [S].
        sr: sample rate in Hz.
        hop: hop length in samples.
        window_ms: Hann window length in milliseconds (zero-padded to ``n_fft``).
        n_fft: FFT size.
        n_mels: number of HTK mel bands.

    Returns:
        log(mel + 1e-6) [T, n_mels] with T = 1 + S // hop (time-major).
    """
    win = round(window_ms * sr / 1000)
    stft = librosa.stft(y, n_fft=n_fft, hop_length=hop, win_length=win, window="hann", center=True,
                        pad_mode="constant")
    return np.log(_mel_basis(sr, n_fft, n_mels) @ np.abs(stft) + 1e-6).T


@functools.cache
def _mel_basis(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """HTK mel matrix [n_mels, n_fft // 2 + 1], cached so that the timed reference does not rebuild it (2 ms a call)."""
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sr / 2, htk=True, norm=None)


def playback_pyramid_reference(y: np.ndarray, sr: int, num_playbacks: int, frames0: int = 400,
                               window_ms: float = 20.0, window_scaling: str = "fixed") -> list[np.ndarray]:
    """Per-item playback pyramid with librosa: playback i has exactly frames0 * (i + 1) frames.

    Args:
        y: mono waveform [N] (the crop).
        sr: sample rate in Hz.
        num_playbacks: number of playbacks S.
        frames0: frames of playback 0 (T0).
        window_ms: Hann window length in milliseconds (of playback 0 when window_scaling is "hop").
        window_scaling: "fixed" (one window) or "hop" (playback i's window is window_ms / (i + 1)).

    Returns:
        S arrays [T0 * (i + 1), 128].
    """
    out = []
    for i in range(num_playbacks):
        frames = frames0 * (i + 1)
        hop = round(len(y) / frames)
        padded = np.pad(y, (0, max(0, (frames - 1) * hop - len(y))))
        window = window_ms / (i + 1) if window_scaling == "hop" else window_ms
        out.append(log_mel_reference(padded, sr, hop, window)[:frames])
    return out

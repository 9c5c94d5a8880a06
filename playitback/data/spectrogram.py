"""The playback pyramid: log-mel spectrograms of one crop at T0, 2*T0, ... frames (DESIGN.md section 2).

The default recipe is the original PlayItBack's ("librosa" style): a Hann window of ``window_ms`` zero-padded (centred) to
``n_fft``, a centred STFT with zero padding, magnitude, HTK mel bands without normalisation, ``log(mel + 1e-6)``,
time-major. Playback i over a crop of N samples uses the hop ``round(N / (T0 * (i + 1)))`` and keeps exactly
``T0 * (i + 1)`` frames (the waveform is zero-padded at the end when the hop rounds down), so every clip of a batch
gives the same shapes (the original's frame counts varied with the clip, and its hop was truncated).

Short segments. A crop whose segment is shorter than the clip (half of the EPIC-KITCHENS-100 validation actions are
under 1.999 s) arrives zero-padded with its number of valid samples. With ``pad_mode="edge"`` (the default, as
auditory-slow-fast's EPIC loader and the original PlayItBack's short-audio path do) every frame after the last one
centred inside the audio repeats that frame; with ``"zeros"`` they stay the log-mel of silence, ``ln(1e-6)`` in every
band. Edge padding is the default because a block of constant ``ln(1e-6)`` is a value no real recording produces, so
the model would learn "short action" from the padding itself, and because checkpoints trained in that lineage saw edge
padding.

Shape legend: B batch, S samples of the crop, T frames, F mel bins (n_mels), W window samples.

How it is fast (measured on a 2-core CPU, see ``bench/frontend.py``):

* Frames shared between playbacks are computed once: where hop_i is a multiple k of a finer playback's hop_j, frame t
  of playback i is frame t*k of playback j (e.g. VGG-Sound playback 0, hop 200, is every 2nd frame of playback 1).
* Only the ``W`` window samples of each frame are gathered; ``torch.fft.rfft(n=n_fft)`` zero-pads them to ``n_fft``.
  The pad sits after the window instead of around it, which changes only the phase, not the magnitude.
* The magnitude is ``sqrt(re^2 + im^2)`` on the real view: ``Tensor.abs`` of a complex tensor costs twice as much.
* The mel matrix is 98% zeros and banded; it is applied as a few dense blocks of consecutive bands, each restricted to
  the bins those bands touch (about 7x fewer multiply-adds than the dense product).
* On the CPU the frames go through in chunks that stay in cache.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import librosa
import torch
from torch import Tensor, nn

from playitback.config.choices import FEATURE_STYLES, PAD_MODES, WINDOW_SCALINGS

LOG_OFFSET = 1e-6
# Kaldi's fbank (the AST front-end): the floor of the mel power before the log (float32 epsilon) and the
# pre-emphasis coefficient.
KALDI_MEL_FLOOR = 1.1920928955078125e-07
KALDI_PREEMPHASIS = 0.97
# Kaldi's lowest mel band edge, Hz (its --low-freq default).
KALDI_LOW_FREQ = 20.0
# Mel bands per dense block of the banded mel product: fewer bands per block waste fewer zeros, more blocks cost more
# small matmuls; 16 was the fastest of 8/16/32 (and 5x faster than the dense product) for 128 bands at n_fft 2048.
_BANDS_PER_BLOCK = 16
# Frames per CPU thread in one chunk: the spectrum of 256 frames (2 MiB) stays near the core's L2 cache, which made the
# element-wise steps 1.5x faster than whole-clip chunks. GPUs take the whole batch at once.
_CPU_FRAMES_PER_THREAD = 256


def playback_windows(window_ms: float, sample_rate: int, num_playbacks: int, scaling: str = "fixed") -> list[int]:
    """Hann window length of every playback, in samples: ``round(window_ms * sample_rate / 1000 / d_i)`` with d_i = 1
    ("fixed") or i + 1 ("hop": the window shrinks with the hop, so it spans the same number of hops everywhere).

    Returns:
        S window lengths, playback 0 first.
    """
    if scaling not in WINDOW_SCALINGS:
        raise ValueError(f"window scaling must be one of {WINDOW_SCALINGS}, got {scaling!r}")
    return [round(window_ms * sample_rate / 1000 / (i + 1 if scaling == "hop" else 1)) for i in range(num_playbacks)]


def playback_hops(num_samples: int, num_playbacks: int, frames0: int = 400) -> list[int]:
    """Hop of every playback, in samples: ``round(num_samples / (frames0 * (i + 1)))``.

    Args:
        num_samples: length N of the crop.
        num_playbacks: number of playbacks S (PLAYBACK + 1).
        frames0: frames T0 of playback 0.

    Returns:
        S hops, coarsest (playback 0) first.

    Raises:
        ValueError: if an argument is not positive or the crop is too short for a hop of at least one sample.
    """
    if num_playbacks < 1 or frames0 < 1:
        raise ValueError(f"num_playbacks ({num_playbacks}) and frames0 ({frames0}) must be at least 1")
    hops = [round(num_samples / (frames0 * (i + 1))) for i in range(num_playbacks)]
    if hops[-1] < 1:
        raise ValueError(
            f"a crop of {num_samples} samples is too short for {num_playbacks} playbacks with frames0={frames0}: "
            f"playback {num_playbacks - 1} needs {frames0 * num_playbacks} frames, i.e. a hop below one sample; "
            "use longer crops, fewer playbacks or a smaller frames0"
        )
    return hops


def kaldi_mel_filters(sample_rate: int, n_fft: int, n_mels: int, low_freq: float = KALDI_LOW_FREQ) -> Tensor:
    """Kaldi's mel filter bank (``MelBanks``, as ``torchaudio.compliance.kaldi.fbank`` builds it): triangles in the
    mel domain (``mel = 1127 ln(1 + f / 700)``) with edges equally spaced from ``low_freq`` to the Nyquist frequency,
    unnormalised, over the ``n_fft // 2 + 1`` bins (the Nyquist bin gets no weight).

    Returns:
        float64 [n_mels, n_fft // 2 + 1].
    """
    def mel(freq: Tensor) -> Tensor:
        return 1127.0 * torch.log1p(freq / 700.0)

    low, high = mel(torch.tensor(float(low_freq), dtype=torch.float64)), mel(
        torch.tensor(sample_rate / 2, dtype=torch.float64))
    delta = (high - low) / (n_mels + 1)
    edges = low + delta * torch.arange(n_mels + 2, dtype=torch.float64)  # [n_mels + 2]
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = mel(torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft)[None]  # [1, bins]
    rising, falling = (bins - left) / (centre - left), (right - bins) / (right - centre)
    weights = torch.where(bins <= centre, rising, falling)
    weights = torch.where((bins > left) & (bins < right), weights, torch.zeros_like(weights))
    weights[:, -1] = 0.0
    return weights


@dataclass(frozen=True)
class _MelBlock:
    """Consecutive mel bands [band_start, band_stop) that only touch the bins [bin_start, bin_stop)."""

    band_start: int
    band_stop: int
    bin_start: int
    bin_stop: int


def _mel_blocks(mel: Tensor) -> list[_MelBlock]:
    """Split the mel matrix [F, n_fft // 2 + 1] into blocks of consecutive bands with their bin support."""
    blocks = []
    for start in range(0, mel.shape[0], _BANDS_PER_BLOCK):
        stop = min(start + _BANDS_PER_BLOCK, mel.shape[0])
        support = mel[start:stop].ne(0).any(dim=0).nonzero().flatten().tolist()
        # A block of all-zero bands (too many bands for n_fft) still needs a non-empty bin range.
        bin_start, bin_stop = (support[0], support[-1] + 1) if support else (0, 1)
        blocks.append(_MelBlock(start, stop, bin_start, bin_stop))
    return blocks


@dataclass(frozen=True)
class _Constants:
    """The window of every playback ([W_i]) and the weights [bins, bands] of every mel block, on one device and
    dtype."""

    windows: list[Tensor]
    mel_weights: list[Tensor]


class PlaybackPyramid(nn.Module):
    """Waveform crops -> playback pyramid of log-mel spectrograms (batched, on the waveform's device).

    The module has no parameters or state-dict entries: the window and the mel matrix (as dense blocks of its
    non-zero band) are built once and cached per (device, dtype) on first use, so it works on any device without
    ``.to()``. float64 waveforms are processed in float64, every other floating dtype in float32.

    Args:
        sample_rate: sample rate of the waveforms in Hz.
        num_playbacks: number of playbacks S (PLAYBACK + 1).
        frames0: frames T0 of playback 0; playback i has T0 * (i + 1) frames.
        window_ms: Hann window length of playback 0 in milliseconds (zero-padded to n_fft).
        n_fft: FFT size (sets the bin spacing; only the window samples are non-zero).
        n_mels: number of HTK mel bands F (fmin 0, fmax sample_rate / 2, no normalisation).
        pad_mode: frames after the valid samples of a short crop: "edge" repeats the last frame centred inside the
            audio (auditory-slow-fast), "zeros" keeps the log-mel of the zero padding.
        window_scaling: "fixed": every playback uses the window of playback 0 (the original); "hop": playback i
            uses window_ms / (i + 1), so that the window spans as many hops at every playback and a finer hop also
            resolves finer time structure (with a fixed window, a finer hop oversamples the same smoothed envelope).
        style: "librosa": the recipe above (centred frames, periodic Hann, magnitude, HTK mel,
            ``log(mel + 1e-6)``); "kaldi": Kaldi's fbank as the Audio Spectrogram Transformer's front-end computes it
            (``ASTFeatureExtractor``, ``torchaudio.compliance.kaldi.fbank`` with a Hann window): frame t starts at
            sample ``t * hop`` (not centred; a shorter window of a finer playback is centred where playback 0's
            window is), the frame's mean removed, pre-emphasis 0.97 inside the frame, symmetric Hann, power
            spectrum, Kaldi mel bands from 20 Hz (:func:`kaldi_mel_filters`), ``log(max(mel, 1.19e-7))``. For AST's
            exact features use a 25 ms window, n_fft 512 (Kaldi's next power of two) and a 10 ms hop.
    """

    def __init__(self, sample_rate: int, num_playbacks: int, frames0: int = 400, window_ms: float = 20.0,
                 n_fft: int = 2048, n_mels: int = 128, pad_mode: str = "edge", window_scaling: str = "fixed",
                 style: str = "librosa") -> None:
        super().__init__()
        if style not in FEATURE_STYLES:
            raise ValueError(f"style must be one of {FEATURE_STYLES}, got {style!r}")
        self.style = style
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if window_scaling not in WINDOW_SCALINGS:
            raise ValueError(f"window_scaling must be one of {WINDOW_SCALINGS}, got {window_scaling!r}")
        self.pad_mode = pad_mode
        self.window_scaling = window_scaling
        self.sample_rate = sample_rate
        self.num_playbacks = num_playbacks
        self.frames0 = frames0
        self.win_lengths = playback_windows(window_ms, sample_rate, num_playbacks, window_scaling)
        self.n_fft = n_fft
        self.n_mels = n_mels
        if not all(1 <= length <= n_fft for length in self.win_lengths):
            raise ValueError(
                f"window_ms={window_ms} gives windows of {self.win_lengths} samples at {sample_rate} Hz; "
                f"each must be between 1 and n_fft={n_fft} samples"
            )
        if style == "kaldi":
            # Frame t of playback 0 starts at t * hop; a shorter window shares playback 0's window centre.
            self.window_offsets = [-((self.win_lengths[0] - length) // 2) for length in self.win_lengths]
            mel = kaldi_mel_filters(sample_rate, n_fft, n_mels)
        else:
            # librosa centres the window inside the n_fft frame, so the window starts n_fft // 2 - (n_fft - W) // 2
            # samples before the frame centre.
            self.window_offsets = [n_fft // 2 - (n_fft - length) // 2 for length in self.win_lengths]
            mel = torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0,
                                                       fmax=sample_rate / 2, htk=True, norm=None)).double()
        self.mel_blocks = _mel_blocks(mel)
        self._master = _Constants(
            windows=[torch.hann_window(length, periodic=style == "librosa", dtype=torch.float64)
                     for length in self.win_lengths],
            mel_weights=[mel[b.band_start:b.band_stop, b.bin_start:b.bin_stop].T.contiguous()
                         for b in self.mel_blocks],
        )
        self._cache: dict[tuple[torch.device, torch.dtype], _Constants] = {}
        self.bin_start = min(b.bin_start for b in self.mel_blocks)
        self.bin_stop = max(b.bin_stop for b in self.mel_blocks)

    def mel_matrix(self) -> Tensor:
        """The dense mel matrix [F, n_fft // 2 + 1] (float64) rebuilt from the cached blocks."""
        mel = torch.zeros(self.n_mels, self.n_fft // 2 + 1, dtype=torch.float64)
        for block, weights in zip(self.mel_blocks, self._master.mel_weights):
            mel[block.band_start:block.band_stop, block.bin_start:block.bin_stop] = weights.T
        return mel

    def _constants(self, device: torch.device, dtype: torch.dtype) -> _Constants:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = _Constants(
                windows=[w.to(device, dtype) for w in self._master.windows],
                mel_weights=[w.to(device, dtype) for w in self._master.mel_weights],
            )
        return self._cache[key]

    def forward(self, waveform: Tensor, valid_samples: Tensor | int | None = None) -> list[Tensor]:
        """Render the playback pyramid of a batch of crops.

        Args:
            waveform: crops [B, S] or one crop [S], float, on any device.
            valid_samples: samples of each crop that hold audio, [B] (or an int for one crop); the rest is zero
                padding, treated as ``pad_mode`` says. None: every sample is audio.

        Returns:
            num_playbacks tensors [B, T0 * (i + 1), F] (or [T0 * (i + 1), F] for one crop) on the waveform's device,
            float32 (float64 for float64 input).
        """
        if waveform.dim() not in (1, 2) or not waveform.is_floating_point():
            raise ValueError(
                f"PlaybackPyramid expects a float waveform [S] or a batch [B, S]; got {waveform.dtype} "
                f"{tuple(waveform.shape)} (down-mix channels first; convert int16 PCM with waveform.float() / 32768)"
            )
        if waveform.dim() == 1:
            single = None if valid_samples is None else torch.as_tensor(valid_samples).reshape(1)
            return [p[0] for p in self.forward(waveform[None], single)]
        dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
        waveform = waveform.to(dtype)
        constants = self._constants(waveform.device, dtype)
        hops = playback_hops(waveform.shape[-1], self.num_playbacks, self.frames0)
        frames = [self.frames0 * (i + 1) for i in range(self.num_playbacks)]
        sources = _frame_sources(tuple(hops), tuple(frames), tuple(self.win_lengths))
        rendered = {i: self._log_mel(waveform, hops[i], frames[i], i, constants)
                    for i, source in enumerate(sources) if source is None}
        playbacks = [rendered[i] if source is None
                     else rendered[source[0]][:, : frames[i] * source[1] : source[1]].contiguous()
                     for i, source in enumerate(sources)]
        if valid_samples is None or self.pad_mode == "zeros":
            return playbacks
        valid = torch.as_tensor(valid_samples, device=waveform.device).reshape(-1, 1)
        return [edge_pad_frames(p, valid, hop, waveform.shape[-1]) for p, hop in zip(playbacks, hops)]

    def _log_mel(self, waveform: Tensor, hop: int, num_frames: int, playback: int, constants: _Constants) -> Tensor:
        """Log-mel of every crop at one hop, with the window of `playback`: waveform [B, S] -> [B, num_frames, F]."""
        batch, num_samples = waveform.shape
        length, offset = self.win_lengths[playback], self.window_offsets[playback]
        # Zero-pad so that the window of frame t covers samples [t * hop - offset, t * hop - offset + W) of the crop
        # and the last of the num_frames frames fits (a negative offset starts the frames inside the crop).
        right = max(0, (num_frames - 1) * hop + length - offset - num_samples)
        padded = nn.functional.pad(waveform, (max(offset, 0), right))[:, max(-offset, 0):]
        windows = padded.unfold(-1, length, hop)[:, :num_frames]  # [B, T, W] view
        if self.style == "kaldi":
            windows = windows - windows.mean(dim=-1, keepdim=True)
            windows = torch.cat((windows[..., :1] * (1 - KALDI_PREEMPHASIS),
                                 windows[..., 1:] - KALDI_PREEMPHASIS * windows[..., :-1]), dim=-1)
        framed = (windows * constants.windows[playback]).flatten(0, 1)  # [B*T, W]
        chunk = framed.shape[0]
        if framed.device.type == "cpu":
            chunk = _CPU_FRAMES_PER_THREAD * torch.get_num_threads()
        log_mel = torch.cat([self._log_mel_frames(rows, constants) for rows in framed.split(chunk)])
        return log_mel.view(batch, num_frames, self.n_mels)

    def _log_mel_frames(self, framed: Tensor, constants: _Constants) -> Tensor:
        """Windowed frames [N, W] -> log-mel [N, F]."""
        spectrum = torch.fft.rfft(framed, n=self.n_fft)  # [N, n_fft // 2 + 1] complex
        power = torch.view_as_real(spectrum).square_()[:, self.bin_start:self.bin_stop]  # [N, bins, 2]
        power = power[..., 0] + power[..., 1]  # [N, bins]
        spectrum = power if self.style == "kaldi" else power.sqrt_()
        mel = torch.cat(
            [spectrum[:, block.bin_start - self.bin_start:block.bin_stop - self.bin_start] @ weights
             for block, weights in zip(self.mel_blocks, constants.mel_weights)],
            dim=1,
        )
        if self.style == "kaldi":
            return mel.clamp_min_(KALDI_MEL_FLOOR).log_()
        return mel.add_(LOG_OFFSET).log_()


def edge_pad_frames(spectrogram: Tensor, valid_samples: Tensor, hop: int, crop_samples: int) -> Tensor:
    """Repeat the last frame centred inside the audio over the frames that follow it, in crops that are short.

    Frame t is centred on sample t * hop, so for L valid samples the last such frame is L // hop (the last frame of the
    centred STFT of the L samples alone, as auditory-slow-fast computes it before padding with numpy's "edge" mode).
    Full crops (L = crop_samples) are left as they are. Index arithmetic only: no host synchronisation, the same
    shapes for every batch.

    Args:
        spectrogram: [B, T, F].
        valid_samples: [B, 1] samples that hold audio.
        hop: hop in samples.
        crop_samples: samples of a full crop.

    Returns:
        [B, T, F].
    """
    frames = torch.arange(spectrogram.shape[1], device=spectrogram.device)  # [T]
    last = torch.div(valid_samples.clamp_min(0), hop, rounding_mode="floor")  # [B, 1]
    last = torch.where(valid_samples >= crop_samples, spectrogram.shape[1] - 1, last)
    index = torch.minimum(frames[None], last).unsqueeze(-1).expand_as(spectrogram)  # [B, T, F]
    return spectrogram.gather(1, index)


@functools.cache
def _frame_sources(hops: tuple[int, ...], frames: tuple[int, ...],
                   windows: tuple[int, ...]) -> list[tuple[int, int] | None]:
    """For each playback, None (render it) or (finer playback j, stride k) whose every k-th frame it equals.

    Frame t of playback i is centred on sample t * hop_i; when hop_i = k * hop_j that is frame t * k of playback j,
    provided playback j has enough frames and the same window. Finer playbacks are decided first so that sources are
    always rendered.
    """
    sources: list[tuple[int, int] | None] = [None] * len(hops)
    for i in reversed(range(len(hops))):
        for j in range(len(hops) - 1, i, -1):
            stride = hops[i] // hops[j]
            if (sources[j] is None and hops[i] % hops[j] == 0 and windows[i] == windows[j]
                    and (frames[i] - 1) * stride < frames[j]):
                sources[i] = (j, stride)
                break
    return sources


@functools.cache
def _cached_pyramid(sample_rate: int, num_playbacks: int, frames0: int, window_ms: float, n_fft: int,
                    n_mels: int, pad_mode: str, window_scaling: str, style: str) -> PlaybackPyramid:
    return PlaybackPyramid(sample_rate, num_playbacks, frames0, window_ms, n_fft, n_mels, pad_mode, window_scaling,
                           style)


def playback_pyramid(waveform: Tensor, sample_rate: int, num_playbacks: int, frames0: int = 400,
                     window_ms: float = 20.0, n_fft: int = 2048, n_mels: int = 128, *,
                     valid_samples: Tensor | int | None = None, pad_mode: str = "edge",
                     window_scaling: str = "fixed", style: str = "librosa") -> list[Tensor]:
    """Playback pyramid of one crop or a batch of crops (public API, DESIGN.md section 6).

    Uses one cached :class:`PlaybackPyramid` per configuration, so repeated calls build the mel matrix once.

    Args:
        waveform: crop [S] or crops [B, S], float, on any device.
        sample_rate: sample rate in Hz.
        num_playbacks: number of playbacks S (PLAYBACK + 1).
        frames0: frames T0 of playback 0.
        window_ms: Hann window length in milliseconds.
        n_fft: FFT size.
        n_mels: number of mel bands F.
        valid_samples: samples of audio in each crop ([B] or an int), the rest being zero padding; None: all.
        pad_mode: how the frames after a short crop's audio are filled ("edge" or "zeros", see PlaybackPyramid).
        window_scaling: "fixed" (one window) or "hop" (playback i's window is window_ms / (i + 1); see
            PlaybackPyramid).
        style: "librosa" or "kaldi" (the AST front-end; see PlaybackPyramid).

    Returns:
        num_playbacks tensors [T0 * (i + 1), F] or [B, T0 * (i + 1), F] on the waveform's device.
    """
    pyramid = _cached_pyramid(sample_rate, num_playbacks, frames0, float(window_ms), n_fft, n_mels, pad_mode,
                              window_scaling, style)
    return pyramid(waveform, valid_samples)

"""Log-mel statistics of a dataset split: the input normalisation of the encoder and the clip-statistics baseline.

* :func:`input_statistics`: mean and standard deviation of the playback-0 log-mels the encoder reads (centre crops of
  the training clips), for ``AUDIO_DATA.NORM_MEAN`` / ``NORM_STD`` (tools/input_stats.py).
* :func:`clip_statistics`: per clip, the mean and standard deviation over time of every mel band of a dense log-mel
  (hop = half the window) of the whole segment, ``[N, 2F]``: the features of tools/baseline.py.

Both read the split as training does (annotations, reader, resampling) through DataLoader workers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from playitback.config import derived
from playitback.data.build import build_reader, load_split_records
from playitback.data.dataset import crop_or_pad, crop_start
from playitback.data.records import ClipRecord
from playitback.data.spectrogram import playback_pyramid


class _SegmentFeatures(Dataset):
    """Item i: ``transform(segment waveform of record i)``."""

    def __init__(self, records: Sequence[ClipRecord], reader: Callable[[ClipRecord], np.ndarray],
                 transform: Callable[[Tensor], Tensor]) -> None:
        self.records, self.reader, self.transform = list(records), reader, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Tensor:
        segment = self.reader(self.records[index])
        return self.transform(torch.from_numpy(np.ascontiguousarray(segment, dtype=np.float32)))


def _map_records(cfg: CfgNode, records: Sequence[ClipRecord], split: str,
                 transform: Callable[[Tensor], Tensor]) -> list[Tensor]:
    loader = DataLoader(_SegmentFeatures(records, build_reader(cfg, split), transform), batch_size=None,
                        num_workers=cfg.DATA_LOADER.NUM_WORKERS)
    return list(loader)


class _CentreCropLogMel:
    """Playback 0 of the centre crop, as the encoder reads it: [T0, F]."""

    def __init__(self, cfg: CfgNode) -> None:
        audio = cfg.AUDIO_DATA
        self.clip_samples = derived.clip_samples(cfg)
        self.kwargs = {"sample_rate": audio.SAMPLING_RATE, "num_playbacks": 1, "frames0": audio.FRAMES0,
                       "window_ms": audio.WINDOW_LENGTH, "n_fft": audio.N_FFT, "n_mels": audio.NUM_FREQUENCIES,
                       "pad_mode": audio.PAD_MODE}

    def __call__(self, segment: Tensor) -> Tensor:
        start = crop_start(segment.shape[0], self.clip_samples, "val", 0, 1, None)
        crop, valid = crop_or_pad(segment.numpy(), start, self.clip_samples)
        return playback_pyramid(torch.from_numpy(crop), **self.kwargs, valid_samples=valid)[0]


class _DenseLogMelStatistics:
    """Mean and standard deviation over time of each band of the segment's log-mel at hop = window / 2: [2F]."""

    def __init__(self, cfg: CfgNode) -> None:
        audio = cfg.AUDIO_DATA
        self.hop = max(1, derived.window_samples(cfg) // 2)
        self.kwargs = {"sample_rate": audio.SAMPLING_RATE, "num_playbacks": 1, "window_ms": audio.WINDOW_LENGTH,
                       "n_fft": audio.N_FFT, "n_mels": audio.NUM_FREQUENCIES}

    def __call__(self, segment: Tensor) -> Tensor:
        frames = max(2, round(segment.shape[0] / self.hop))
        log_mel = playback_pyramid(segment, frames0=frames, **self.kwargs)[0]
        return torch.cat([log_mel.mean(0), log_mel.std(0)])


def input_statistics(cfg: CfgNode, max_clips: int = 2000, seed: int = 0) -> tuple[float, float, int]:
    """(mean, standard deviation, clips used) of the playback-0 log-mel values of the training split's centre crops,
    over at most ``max_clips`` clips drawn at random (with ``seed``)."""
    records = load_split_records(cfg, "train")
    if len(records) > max_clips:
        chosen = np.random.default_rng(seed).choice(len(records), max_clips, replace=False)
        records = [records[i] for i in sorted(chosen)]
    total = total_sq = count = 0.0
    for log_mel in _map_records(cfg, records, "train", _CentreCropLogMel(cfg)):
        values = log_mel.double()
        total += float(values.sum())
        total_sq += float((values**2).sum())
        count += values.numel()
    mean = total / count
    return mean, float(np.sqrt(max(total_sq / count - mean**2, 0.0))), len(records)


def clip_statistics(cfg: CfgNode, split: str) -> tuple[np.ndarray, list[ClipRecord]]:
    """Features [N, 2F] (per-band mean, then per-band standard deviation, of the dense log-mel) of every record of
    ``split``, and the records."""
    records = load_split_records(cfg, split)
    features = _map_records(cfg, records, split, _DenseLogMelStatistics(cfg))
    return torch.stack(features).numpy().astype(np.float64), records

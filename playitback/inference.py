"""Running a trained model on audio: crops -> playbacks -> model -> probabilities, saliency and replayed segments.

Used by tools/predict.py, tools/plot_segments.py and the demo. Shape legend: B crops, N samples per crop, S
playbacks, T0 frames of playback 0, F mel bins, K classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch import Tensor, nn

from playitback.anytime import exit_confidence
from playitback.config import derived
from playitback.data.build import build_pyramid
from playitback.engine.checkpoint_files import load_weights
from playitback.models import PlayItBack, build_model
from playitback.models.replay import replayed_seconds


@dataclass
class CropAnalysis:
    """What the model made of one crop.

    Attributes:
        start_s: where the crop starts in the audio (seconds).
        duration_s: crop length (seconds).
        probabilities: [K] class probabilities (softmax per task, sigmoid for multi-label).
        logits: [K].
        features: [D] fused decoder features (the embedding), or the mean encoder token for the encoder alone.
        spectrogram: [T0, F] log-mel of playback 0.
        saliency: [S, T0] saliency of each playback in [0, 1] on the frame grid of playback 0 (each curve read at
            its composite's source times; empty for the encoder alone).
        segments: per replay (playback 1, 2, ...) the replayed [start_s, end_s] spans, in seconds of the audio.
        exit_playback: under anytime inference (TEST.EXIT_POLICY), the playback the crop stopped after; its
            saliency and segments are then empty (the early-exit forward keeps only the prediction). None: every
            playback ran.
    """

    start_s: float
    duration_s: float
    probabilities: np.ndarray
    logits: np.ndarray
    features: np.ndarray
    spectrogram: np.ndarray
    saliency: np.ndarray
    segments: list[list[list[float]]]
    exit_playback: int | None = None


def load_inference_model(cfg: CfgNode, checkpoint: str | Path | None, device: torch.device,
                         strict: bool = False) -> nn.Module:
    """build_model(cfg) with the checkpoint's weights, in eval mode on `device`.

    Args:
        cfg: The config the checkpoint was trained with.
        checkpoint: Checkpoint file, or None for random weights.
        device: Where the model runs.
        strict: Require every weight of the model from the checkpoint (for prediction: a head or decoder left at
            its random initialisation would give confident nonsense).

    Raises:
        CheckpointError: No weight of the checkpoint fits the config's model or, when `strict`, some do not.
    """
    model = build_model(cfg)
    if checkpoint is not None:
        load_weights(model, checkpoint, cfg.TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN, strict=strict)
    return model.to(device).eval()


def probabilities(logits: Tensor, class_counts: list[int], multi_label: bool) -> Tensor:
    """[B, K] logits -> probabilities: sigmoid (multi-label) or a softmax per task block."""
    if multi_label:
        return torch.sigmoid(logits)
    return torch.cat([block.softmax(-1) for block in logits.split(class_counts, -1)], -1)


def window_starts(num_samples: int, clip_samples: int, hop_samples: int) -> list[int]:
    """Starts of the analysis windows of a recording: one crop for audio up to one clip long, else windows every
    `hop_samples` with the last one aligned to the end."""
    if num_samples <= clip_samples:
        return [0]
    starts = list(range(0, num_samples - clip_samples + 1, hop_samples))
    if starts[-1] != num_samples - clip_samples:
        starts.append(num_samples - clip_samples)
    return starts


@torch.no_grad()
def analyse_crops(cfg: CfgNode, model: nn.Module, crops: Tensor, starts_s: list[float],
                  pyramid: nn.Module | None = None, valid_samples: list[int] | None = None) -> list[CropAnalysis]:
    """Run the model on crops [B, N] (already cut or zero-padded to the clip length) whose starts in the audio are
    `starts_s` and which hold `valid_samples` samples of audio each (None: all); returns one :class:`CropAnalysis`
    per crop. Short crops are padded as in training (AUDIO_DATA.PAD_MODE)."""
    device = next(model.parameters()).device
    pyramid = (pyramid or build_pyramid(cfg)).to(device)
    valid = None if valid_samples is None else torch.tensor(valid_samples, device=device)
    playbacks = pyramid(crops.to(device), valid)
    counts = derived.class_counts(cfg)
    duration = crops.shape[1] / cfg.AUDIO_DATA.SAMPLING_RATE
    frames0 = playbacks[0].shape[1]
    if cfg.TEST.EXIT_POLICY != "none" and isinstance(model, PlayItBack):
        rule = partial(exit_confidence, class_counts=counts, multi_label=cfg.DATA.MULTI_LABEL,
                       policy=cfg.TEST.EXIT_POLICY)
        early = model.forward_anytime(playbacks, rule, cfg.TEST.EXIT_THRESHOLD)
        logits, features = early.logits.float(), early.features.float()
        exits: list[int | None] = early.exits.tolist()
        segments: list[list[list[float]]] = [[] for _ in starts_s]
        saliency = np.zeros((len(starts_s), 0, frames0), dtype=np.float32)
    else:
        outputs = model(playbacks).float()
        logits, features = outputs.logits, outputs.features
        exits = [None] * len(starts_s)
        segments = (replayed_seconds(outputs.frame_times, outputs.replay_masks,
                                     derived.playback_hop(cfg, 0) / cfg.AUDIO_DATA.SAMPLING_RATE, list(starts_s))
                    if outputs.has_replay else [[] for _ in starts_s])
        saliency = (saliency_on_playback0_frames(outputs.saliency.cpu(), outputs.frame_times.cpu())
                    if outputs.saliency is not None else np.zeros((len(starts_s), 0, frames0), dtype=np.float32))
    probs = probabilities(logits, counts, cfg.DATA.MULTI_LABEL).cpu().numpy()
    results = []
    for b, start in enumerate(starts_s):
        results.append(CropAnalysis(
            start_s=start, duration_s=duration, probabilities=probs[b], logits=logits[b].cpu().numpy(),
            features=features[b].cpu().numpy(), spectrogram=playbacks[0][b].float().cpu().numpy(),
            saliency=saliency[b], segments=segments[b], exit_playback=exits[b],
        ))
    return results


def saliency_on_playback0_frames(saliency: Tensor, frame_times: Tensor) -> np.ndarray:
    """Each playback's saliency (over its composite's frames) read on the frame grid of playback 0.

    Args:
        saliency: [B, S, T0], the curve of playback i over the frames of composite C_i.
        frame_times: [B, S, T0], the source time of those frames in frames of playback 0.

    Returns:
        float32 [B, S, T0]: curve i linearly interpolated at times 0, 1, ..., T0 - 1.
    """
    grid = np.arange(saliency.shape[-1], dtype=np.float64)
    out = np.empty(saliency.shape, dtype=np.float32)
    for b in range(saliency.shape[0]):
        for i in range(saliency.shape[1]):
            out[b, i] = np.interp(grid, frame_times[b, i].numpy(), saliency[b, i].numpy())
    return out


def crop_windows(waveform: np.ndarray, clip_samples: int, hop_samples: int
                 ) -> tuple[Tensor, list[int], list[int]]:
    """Cut a recording [N_total] into analysis crops [B, clip_samples] (zero-padded at the end); returns them, their
    starts and the samples of audio each holds."""
    starts = window_starts(waveform.shape[0], clip_samples, hop_samples)
    crops = np.zeros((len(starts), clip_samples), dtype=np.float32)
    valid = []
    for row, start in enumerate(starts):
        piece = waveform[start:start + clip_samples]
        crops[row, : piece.shape[0]] = piece
        valid.append(piece.shape[0])
    return torch.from_numpy(crops), starts, valid


@dataclass
class Timeline:
    """The analysis windows of one recording laid end to end on the recording's time axis.

    Attributes:
        spectrogram: [T, F] log-mel of playback 0; where windows overlap the later window is shown.
        saliency: [S, T] saliency of each playback (S = 0 for the encoder alone), stitched the same way.
        segments: per replay, every replayed [start_s, end_s] span of every window, in recording seconds.
        duration_s: T frames times the frame duration.
    """

    spectrogram: np.ndarray
    saliency: np.ndarray
    segments: list[list[list[float]]]
    duration_s: float


def stitch_windows(windows: list[CropAnalysis]) -> Timeline:
    """Lay the windows of one recording (from :func:`crop_windows` + :func:`analyse_crops`) on one time axis.

    Window w covers frames ``[round(start_w / frame_s), ... + T0)`` with ``frame_s = duration_s / T0``.
    """
    if not windows:
        raise ValueError("stitch_windows needs at least one window")
    frames0, bins = windows[0].spectrogram.shape
    frame_s = windows[0].duration_s / frames0
    offsets = [int(round(w.start_s / frame_s)) for w in windows]
    total = max(offsets) + frames0
    spectrogram = np.zeros((total, bins), dtype=np.float32)
    saliency = np.zeros((windows[0].saliency.shape[0], total), dtype=np.float32)
    segments: list[list[list[float]]] = [[] for _ in windows[0].segments]
    for offset, window in zip(offsets, windows):
        spectrogram[offset:offset + frames0] = window.spectrogram
        saliency[:, offset:offset + frames0] = window.saliency
        for replay_index, spans in enumerate(window.segments):
            segments[replay_index].extend(spans)
    return Timeline(spectrogram, saliency, segments, total * frame_s)

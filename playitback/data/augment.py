"""Batch augmentations of the playback pyramid: SpecAugment and MixUp/CutMix with label smoothing.

Both run on batches on the training device. Their randomness comes from one CPU ``torch.Generator`` (parameters are
drawn on the CPU, then moved), so a seeded generator gives the same augmentation on every device and the generator's
state can be checkpointed. They fix the original's SpecAugment (a non-local spline "time warp" driven
by a spectrogram value, masks skipped after a zero width) and MixUp (inputs mixed across the playbacks of
sample 0 while targets were mixed across the batch).

Shape legend: B batch, T frames, F mel bins, S playbacks, K classes (all task heads concatenated), M masks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from playitback.utils.transfer import to_device


@dataclass(frozen=True)
class SpecAugmentParams:
    """The random draws of one SpecAugment call (CPU int64 tensors).

    Attributes:
        warp_centre: t0 of every sample [B], in [W, T - W).
        warp_shift: w of every sample [B], in [-W, W]; frame t0 moves to t0 + w.
        freq_starts: first masked bin [B, M_f].
        freq_widths: masked bins [B, M_f] (0 masks nothing).
        time_starts: first masked frame [B, M_t].
        time_widths: masked frames [B, M_t].
    """

    warp_centre: Tensor
    warp_shift: Tensor
    freq_starts: Tensor
    freq_widths: Tensor
    time_starts: Tensor
    time_widths: Tensor


def _uniform_int(low: Tensor | int, high: Tensor | int, shape: tuple[int, ...],
                 generator: torch.Generator | None) -> Tensor:
    """Integers uniform on {low..high} (inclusive, per element), int64 [shape], drawn on the CPU."""
    low_t = torch.as_tensor(low, dtype=torch.float64)
    span = torch.as_tensor(high, dtype=torch.float64) - low_t + 1
    draw = torch.rand(shape, generator=generator, dtype=torch.float64)
    return (low_t + (draw * span).floor()).long().minimum((low_t + span - 1).long())


def draw_spec_augment_params(batch: int, num_frames: int, num_bins: int, generator: torch.Generator | None = None,
                             time_warp: int = 5, freq_mask: int = 27, num_freq_masks: int = 2, time_mask: int = 25,
                             num_time_masks: int = 2) -> SpecAugmentParams:
    """Draw the SpecAugment parameters of a batch (see :func:`spec_augment`).

    Raises:
        ValueError: if the spectrogram has too few frames for the time warp.
    """
    if time_warp > 0 and num_frames <= 2 * time_warp:
        raise ValueError(
            f"SpecAugment time_warp={time_warp} needs more than {2 * time_warp} frames, got {num_frames}; "
            "use a smaller time_warp (0 disables it)"
        )
    centre = _uniform_int(time_warp, num_frames - time_warp - 1, (batch,), generator)
    shift = _uniform_int(-time_warp, time_warp, (batch,), generator)
    freq_widths = _uniform_int(0, min(freq_mask, num_bins), (batch, num_freq_masks), generator)
    freq_starts = _uniform_int(0, num_bins - freq_widths, (batch, num_freq_masks), generator)
    time_widths = _uniform_int(0, min(time_mask, num_frames), (batch, num_time_masks), generator)
    time_starts = _uniform_int(0, num_frames - time_widths, (batch, num_time_masks), generator)
    return SpecAugmentParams(centre, shift, freq_starts, freq_widths, time_starts, time_widths)


def time_warp_positions(num_frames: int, centre: Tensor, shift: Tensor) -> Tensor:
    """Source position of every output frame of the piecewise-linear time warp.

    [0, t0) is stretched onto [0, t0 + w) and [t0, T) onto [t0 + w, T), each with the half-pixel convention of
    ``torch.nn.functional.interpolate(mode="linear", align_corners=False)`` and clamped inside its own segment, so the
    warp is local: no frame moves by more than |w|.

    Args:
        num_frames: T.
        centre: t0 [B] (int64).
        shift: w [B] (int64).

    Returns:
        Fractional source frames [B, T] (float32, on the device of ``centre``).
    """
    frames = torch.arange(num_frames, device=centre.device, dtype=torch.float32)[None]
    t0 = centre.float()[:, None]
    boundary = (centre + shift).float()[:, None]
    left = ((frames + 0.5) * t0 / boundary.clamp(min=1) - 0.5).clamp(min=0).minimum(t0 - 1)
    right = (t0 + (frames - boundary + 0.5) * (num_frames - t0) / (num_frames - boundary) - 0.5)
    right = right.maximum(t0).clamp(max=num_frames - 1)
    return torch.where(frames < boundary, left, right)


def _frames_at(spec: Tensor, index: Tensor) -> Tensor:
    """spec [B, T, F], frame indices [B, T'] -> the indexed frames [B, T', F]."""
    return spec.gather(1, index[..., None].expand(-1, -1, spec.shape[2]))


def _interval_mask(length: int, starts: Tensor, widths: Tensor) -> Tensor:
    """[B, length] bool: True where some interval [start, start + width) of the sample covers the index."""
    index = torch.arange(length, device=starts.device)[None, None]
    covered = (index >= starts[..., None]) & (index < (starts + widths)[..., None])  # [B, M, length]
    return covered.any(dim=1)


def apply_spec_augment(spec: Tensor, params: SpecAugmentParams) -> Tensor:
    """Apply drawn SpecAugment parameters: time warp, then every frequency and time mask.

    Masked bins and frames are set to the mean of the sample's warped spectrogram.

    Args:
        spec: spectrograms [B, T, F] on any device.
        params: the draws of :func:`draw_spec_augment_params` for this batch.

    Returns:
        The augmented copy [B, T, F].
    """
    batch, num_frames, num_bins = spec.shape
    device = spec.device
    positions = time_warp_positions(num_frames, to_device(params.warp_centre, device),
                                    to_device(params.warp_shift, device))
    lower = positions.floor()
    weight = (positions - lower).to(spec.dtype)[..., None]  # [B, T, 1]
    lower_index = lower.long()
    upper_index = (lower_index + 1).clamp(max=num_frames - 1)
    warped = _frames_at(spec, lower_index) * (1 - weight) + _frames_at(spec, upper_index) * weight
    masked = (_interval_mask(num_bins, to_device(params.freq_starts, device),
                             to_device(params.freq_widths, device))[:, None, :]
              | _interval_mask(num_frames, to_device(params.time_starts, device),
                               to_device(params.time_widths, device))[:, :, None])
    mean = warped.mean(dim=(1, 2), keepdim=True)
    return torch.where(masked, mean, warped)


def spec_augment(spec: Tensor, generator: torch.Generator | None = None, time_warp: int = 5, freq_mask: int = 27,
                 num_freq_masks: int = 2, time_mask: int = 25, num_time_masks: int = 2) -> Tensor:
    """SpecAugment of a batch, each sample with its own random parameters.

    Time warp: a centre t0 ~ U[W, T - W) and a shift w ~ U[-W, W]; [0, t0) is resampled onto [0, t0 + w) and
    [t0, T) onto [t0 + w, T) with linear interpolation (see :func:`time_warp_positions`). Then each frequency mask:
    width f ~ U{0..freq_mask}, start ~ U{0..F - f}; then each time mask the same way with ``time_mask``. Every mask
    is applied (a zero width masks nothing); masked cells get the sample's mean. Sizes are in frames and bins of
    ``spec``, so at a finer playback a time mask covers less time.

    Args:
        spec: spectrograms [B, T, F] on any device.
        generator: CPU generator of the draws (None: torch's default CPU generator).
        time_warp: W in frames (0 disables the warp).
        freq_mask: largest frequency-mask width in bins.
        num_freq_masks: frequency masks per sample.
        time_mask: largest time-mask width in frames.
        num_time_masks: time masks per sample.

    Returns:
        The augmented copy [B, T, F] on the device of ``spec``.
    """
    if spec.dim() != 3:
        raise ValueError(f"spec_augment expects spectrograms [B, T, F]; got shape {tuple(spec.shape)}")
    params = draw_spec_augment_params(spec.shape[0], spec.shape[1], spec.shape[2], generator, time_warp, freq_mask,
                                      num_freq_masks, time_mask, num_time_masks)
    return apply_spec_augment(spec, params)


@dataclass(frozen=True)
class MixParams:
    """One MixUp/CutMix decision for a batch.

    Attributes:
        lam: weight of the original sample in the targets (for CutMix, 1 - box area / spectrogram area).
        box: CutMix box (t_start, t_stop, f_start, f_stop) in playback-0 frames and mel bins, or None for MixUp.
    """

    lam: float
    box: tuple[int, int, int, int] | None


class MixUp:
    """MixUp / CutMix over the batch of all playbacks at once, with label smoothing (timm-style, batch flip).

    One lambda ~ Beta(alpha, alpha) and one pairing (sample b with sample B - 1 - b) are shared by every playback.
    With probability ``prob`` a batch is mixed, by CutMix with probability ``switch_prob`` (else MixUp). The CutMix
    box is drawn in playback-0 frames x mel bins; for playback i its time edges are scaled by (i + 1), so it covers
    the same seconds in every playback, and lambda is corrected to the real box area.

    Args:
        class_counts: classes per task head, e.g. (309,) for VGG-Sound or (97, 300) for EPIC verb/noun.
        multi_label: labels are multi-hot [B, K] (AudioSet); they are mixed without smoothing.
        mixup_alpha: Beta parameter of MixUp (0 disables MixUp).
        cutmix_alpha: Beta parameter of CutMix (0 disables CutMix).
        prob: probability that a batch is mixed at all.
        switch_prob: probability of CutMix rather than MixUp when both are enabled.
        label_smoothing: s; a task block of C classes gets s / C off and 1 - s + s / C on (single-label and
            per-task targets, mixed or not).
    """

    def __init__(self, class_counts: Sequence[int], multi_label: bool = False, mixup_alpha: float = 0.3,
                 cutmix_alpha: float = 1.0, prob: float = 0.3, switch_prob: float = 0.5,
                 label_smoothing: float = 0.1) -> None:
        if not class_counts or min(class_counts) < 1:
            raise ValueError(f"class_counts must list at least one positive class count; got {list(class_counts)}")
        if multi_label and len(class_counts) != 1:
            raise ValueError(f"multi-label targets need a single class count; got {list(class_counts)}")
        self.class_counts = [int(c) for c in class_counts]
        self.multi_label = multi_label
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing

    def targets(self, labels: Tensor) -> Tensor:
        """Unmixed soft targets: labels (int64 [B], int64 [B, n_tasks] or multi-hot [B, K]) -> float32 [B, K]."""
        if self.multi_label:
            if labels.dim() != 2 or labels.shape[1] != self.class_counts[0]:
                raise ValueError(f"multi-label MixUp expects multi-hot labels [B, {self.class_counts[0]}]; "
                                 f"got shape {tuple(labels.shape)}")
            return labels.float()
        tasks = labels[:, None] if labels.dim() == 1 else labels
        if labels.is_floating_point() or tasks.dim() != 2 or tasks.shape[1] != len(self.class_counts):
            raise ValueError(
                f"MixUp with class_counts {self.class_counts} expects int64 labels "
                f"{'[B]' if len(self.class_counts) == 1 else f'[B, {len(self.class_counts)}]'}; "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        counts = torch.tensor(self.class_counts, device=labels.device)
        if bool(((tasks < 0) | (tasks >= counts)).any()):
            raise ValueError(f"labels out of range for class_counts {self.class_counts}: got values "
                             f"{tasks.min().item()}..{tasks.max().item()}; check MODEL.NUM_CLASSES")
        blocks = []
        for task, count in enumerate(self.class_counts):
            off = self.label_smoothing / count
            block = torch.full((tasks.shape[0], count), off, device=labels.device)
            blocks.append(block.scatter_(1, tasks[:, task:task + 1], 1 - self.label_smoothing + off))
        return torch.cat(blocks, dim=1)

    def draw(self, num_frames0: int, num_bins: int, generator: torch.Generator | None = None) -> MixParams | None:
        """Decide whether and how to mix a batch whose playback 0 is [B, num_frames0, num_bins]; None: no mix."""
        enabled = [alpha for alpha in (self.mixup_alpha, self.cutmix_alpha) if alpha > 0]
        if not enabled or torch.rand((), generator=generator).item() >= self.prob:
            return None
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or torch.rand((), generator=generator).item() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        # torch has no seeded Beta sampler; a numpy generator seeded from the torch generator keeps one stream.
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        lam = float(np.random.default_rng(seed).beta(alpha, alpha))
        if not use_cutmix:
            return MixParams(lam, None)
        ratio = (1 - lam) ** 0.5
        cut_t, cut_f = int(num_frames0 * ratio), int(num_bins * ratio)
        centre_t = int(torch.randint(0, num_frames0, (), generator=generator))
        centre_f = int(torch.randint(0, num_bins, (), generator=generator))
        t_start, t_stop = max(centre_t - cut_t // 2, 0), min(centre_t + cut_t // 2, num_frames0)
        f_start, f_stop = max(centre_f - cut_f // 2, 0), min(centre_f + cut_f // 2, num_bins)
        lam = 1 - (t_stop - t_start) * (f_stop - f_start) / (num_frames0 * num_bins)
        return MixParams(lam, (t_start, t_stop, f_start, f_stop))

    def apply(self, playbacks: list[Tensor], targets: Tensor, params: MixParams | None
              ) -> tuple[list[Tensor], Tensor]:
        """Mix playbacks (S tensors [B, T0 * (i + 1), F]) and soft targets [B, K] with drawn parameters."""
        if params is None:
            return list(playbacks), targets
        mixed_targets = params.lam * targets + (1 - params.lam) * targets.flip(0)
        if params.box is None:
            return [params.lam * p + (1 - params.lam) * p.flip(0) for p in playbacks], mixed_targets
        t_start, t_stop, f_start, f_stop = params.box
        mixed = []
        for i, p in enumerate(playbacks):
            out = p.clone()
            scale = i + 1
            box = (slice(None), slice(t_start * scale, t_stop * scale), slice(f_start, f_stop))
            out[box] = p[box].flip(0)
            mixed.append(out)
        return mixed, mixed_targets

    def __call__(self, playbacks: list[Tensor], labels: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[list[Tensor], Tensor]:
        """Mix a batch of playback pyramids and build its soft targets.

        Args:
            playbacks: S tensors [B, T0 * (i + 1), F].
            labels: int64 [B] (single-label), int64 [B, n_tasks] (one column per task) or multi-hot [B, K].
            generator: CPU generator of the draws (None: torch's default CPU generator).

        Returns:
            The mixed playbacks (S tensors [B, T0 * (i + 1), F], new tensors) and soft targets float32 [B, K],
            K = sum(class_counts).
        """
        return self.mix(playbacks, to_device(self.targets(labels), playbacks[0].device), generator)

    def mix(self, playbacks: list[Tensor], targets: Tensor, generator: torch.Generator | None = None
            ) -> tuple[list[Tensor], Tensor]:
        """Mix a batch of playback pyramids (S tensors [B, T0 * (i + 1), F]) and its soft targets [B, K] (built by
        :meth:`targets`, on the playbacks' device); returns new tensors of the same shapes."""
        frames0 = playbacks[0].shape[1]
        for i, p in enumerate(playbacks):
            if p.dim() != 3 or p.shape[1] != frames0 * (i + 1) or p.shape[0] != targets.shape[0]:
                raise ValueError(
                    f"MixUp expects playback i as [B, T0 * (i + 1), F] with B = {targets.shape[0]} labels; "
                    f"playback {i} has shape {tuple(p.shape)} (T0 = {frames0})"
                )
        return self.apply(playbacks, targets, self.draw(frames0, playbacks[0].shape[2], generator))

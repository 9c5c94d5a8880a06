"""The task: one batch from the loader to the model's outputs and the loss dict.

Everything a step needs besides the optimiser lives here (device transfer, the on-device front-end, SpecAugment,
MixUp, autocast, the loss, the replayed segments of an evaluation), so the training loop and the evaluation stay free
of model- or dataset-specific branches.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from playitback.data.augment import MixUp, spec_augment
from playitback.data.labels import LabelSpace
from playitback.losses import PlayItBackLoss, labels_to_targets
from playitback.models.output import ModelOutput
from playitback.models.replay import replayed_seconds
from playitback.utils.transfer import to_device


@dataclass(frozen=True)
class SpecAugmentSettings:
    """Sizes of SpecAugment (frames and mel bins)."""

    time_warp: int = 5
    freq_mask: int = 27
    num_freq_masks: int = 2
    time_mask: int = 25
    num_time_masks: int = 2


class ClassificationTask:
    """Batch -> inputs on the device -> model -> loss dict.

    Args:
        model: PlayItBack or EncoderClassifier (possibly wrapped in DDP or compiled).
        loss_fn: maps (outputs, targets [B, K]) to a dict whose "loss" is back-propagated.
        label_space: the tasks and classes (targets are [B, K], K = label_space.num_outputs).
        device: where the model runs.
        pyramid: the on-device front-end (waveform [B, S] -> playbacks), used when batches carry waveforms.
        spec_augment_settings: SpecAugment in training, or None.
        mixup: MixUp/CutMix in training, or None.
        amp_dtype: autocast dtype in training, or None for fp32.
        eval_amp_dtype: autocast dtype in evaluation, or None for fp32.
        replay_events: pass the batches' "event_mask" to the model as the frames to replay (an oracle).
        generator: CPU generator of the augmentation randomness (its state is checkpointed).
        frame_seconds: seconds per frame of playback 0 (hop / sample rate), for the replayed segments.
    """

    def __init__(self, model: nn.Module, loss_fn: PlayItBackLoss, *, label_space: LabelSpace, device: torch.device,
                 pyramid: nn.Module | None = None, spec_augment_settings: SpecAugmentSettings | None = None,
                 mixup: MixUp | None = None, amp_dtype: torch.dtype | None = None,
                 eval_amp_dtype: torch.dtype | None = None, replay_events: bool = False,
                 generator: torch.Generator | None = None, frame_seconds: float = 0.0) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.label_space = label_space
        self.device = device
        self.pyramid = pyramid
        self.spec_augment_settings = spec_augment_settings
        self.mixup = mixup
        self.amp_dtype = amp_dtype
        self.eval_amp_dtype = eval_amp_dtype
        self.replay_events = replay_events
        self.generator = generator if generator is not None else torch.Generator()
        self.frame_seconds = frame_seconds

    def inputs(self, batch: dict[str, Any], train: bool) -> tuple[list[Tensor], Tensor]:
        """(playbacks: S tensors [B, T0 * (i + 1), F] on the device, targets [B, K])."""
        if "playbacks" in batch:
            playbacks = [to_device(p, self.device) for p in batch["playbacks"]]
        else:
            if self.pyramid is None:
                raise ValueError("the batch holds waveforms but the task has no front-end (pyramid) to render them")
            # "valid_samples" (from the dataset) marks short segments, padded as AUDIO_DATA.PAD_MODE says; a batch
            # without it holds full crops.
            valid = batch.get("valid_samples")
            playbacks = self.pyramid(to_device(batch["waveform"], self.device),
                                     None if valid is None else to_device(valid, self.device))
        # Targets are built (and labels range-checked) on the host, where the loader left the labels: a check on
        # the device would stall the host until the device caught up, every step.
        if train and self.mixup is not None:
            targets = self.mixup.targets(batch["label"])
        else:
            targets = labels_to_targets(batch["label"], self.label_space.class_counts, self.label_space.multi_label)
        targets = to_device(targets, self.device)
        if train and self.spec_augment_settings is not None:
            settings = self.spec_augment_settings
            playbacks = [
                spec_augment(p, self.generator, time_warp=settings.time_warp, freq_mask=settings.freq_mask,
                             num_freq_masks=settings.num_freq_masks, time_mask=settings.time_mask,
                             num_time_masks=settings.num_time_masks)
                for p in playbacks
            ]
        if train and self.mixup is not None:
            return self.mixup.mix(playbacks, targets, self.generator)
        return playbacks, targets

    def step(self, batch: dict[str, Any], train: bool) -> tuple[ModelOutput, dict[str, Tensor], Tensor]:
        """Forward one batch: (model outputs in float32, loss dict, targets [B, K])."""
        playbacks, targets = self.inputs(batch, train)
        dtype = self.amp_dtype if train else self.eval_amp_dtype
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with autocast:
            if self.replay_events:
                outputs = self.model(playbacks, replay_masks=to_device(batch["event_mask"], self.device))
            else:
                outputs = self.model(playbacks)
        outputs = outputs.float()
        return outputs, self.loss_fn(outputs, targets), targets

    def replayed_segments(self, outputs: ModelOutput, batch: dict[str, Any], uids: Sequence[str],
                          clip_seconds: float) -> list[dict[str, Any]]:
        """The replayed segments of a batch in seconds from the start of each audio file: one record per clip, view
        and replay (playback 1, 2, ...); none for a model that does not replay.

        Args:
            outputs: the batch's outputs (replay_masks [B, S - 1, T0], frame_times [B, S, T0]).
            batch: the loader's batch ("crop_start_s" [B], "view" [B]).
            uids: the clip id of every item of the batch.
            clip_seconds: the crop length.
        """
        if not outputs.has_replay:
            return []
        if self.frame_seconds <= 0:
            raise ValueError("the task needs frame_seconds (hop of playback 0 / sample rate) to time the segments")
        starts = [float(s) for s in batch["crop_start_s"]]
        spans = replayed_seconds(outputs.frame_times, outputs.replay_masks, self.frame_seconds, starts)
        records = []
        for item, per_replay in enumerate(spans):
            crop = [round(starts[item], 4), round(starts[item] + clip_seconds, 4)]
            for replay_index, runs in enumerate(per_replay):
                records.append({"video": uids[item], "view": int(batch["view"][item]), "playback": replay_index + 1,
                                "crop": crop, "segments": [[round(s, 4), round(e, 4)] for s, e in runs]})
        return records

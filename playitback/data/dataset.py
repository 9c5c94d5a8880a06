"""One dataset class for every dataset: clip record -> segment waveform -> one crop -> (optionally) playback pyramid.

The same code serves VGG-Sound, AudioSet, EPIC-KITCHENS and a user's own folders; what differs is only the reader
(files or HDF5) and the label format. Randomness (the training crop) is drawn from a generator seeded by
(seed, epoch, index), so an item is the same whatever the number of workers or processes and after a resume.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from playitback.data.audio_io import AudioReadError, ShortAudioError
from playitback.data.records import ClipRecord


class LabelFormat(enum.Enum):
    """How a record's labels become a tensor."""

    SINGLE = "single"  # int64 scalar class id
    MULTI_LABEL = "multi_label"  # float32 multi-hot [C]
    MULTITASK = "multitask"  # int64 [n_tasks], e.g. (verb, noun)


def encode_labels(labels: Sequence[int], label_format: LabelFormat, num_classes: int) -> torch.Tensor:
    """A record's label ids as the tensor the losses and metrics take (see :class:`LabelFormat`)."""
    if label_format is LabelFormat.SINGLE:
        return torch.tensor(labels[0], dtype=torch.int64)
    if label_format is LabelFormat.MULTITASK:
        return torch.tensor(list(labels), dtype=torch.int64)
    target = torch.zeros(num_classes, dtype=torch.float32)
    target[list(labels)] = 1.0
    return target


def crop_start(num_samples: int, clip_samples: int, mode: str, view: int, num_views: int,
               rng: np.random.Generator | None) -> int:
    """First sample of the crop of a segment with `num_samples` samples.

    train: uniform in [0, delta]; val: the centre; test: view k of `num_views` uniformly spaced views (the first and
    last crops for two views), delta = max(num_samples - clip_samples, 0).
    """
    delta = max(num_samples - clip_samples, 0)
    if mode == "train":
        assert rng is not None
        return int(rng.integers(0, delta + 1))
    if mode == "val":
        return delta // 2
    return int(round(np.linspace(0, delta, num_views)[view])) if num_views > 1 else delta // 2


def crop_or_pad(segment: np.ndarray, start: int, clip_samples: int) -> tuple[np.ndarray, int]:
    """[S] -> ([clip_samples], valid samples): the crop starting at `start`, zero-padded at the end when the segment is
    short (how the spectrogram treats the padded frames is the pyramid's choice, see AUDIO_DATA.PAD_MODE)."""
    crop = segment[start:start + clip_samples]
    valid = crop.shape[0]
    if valid < clip_samples:
        crop = np.pad(crop, (0, clip_samples - valid))
    return crop, valid


class AudioClipDataset(Dataset):
    """Items of one split.

    Each item is a dict:
        "waveform": float32 [clip_samples] (when `pyramid` is None: the device computes the spectrograms), or
        "playbacks": list of S float32 tensors [T0 * (i + 1), F] (the pyramid computed in the worker);
        "label": see :class:`LabelFormat`; "index": record index; "view": test view;
        "crop_start_s": where the crop starts, in seconds from the start of the audio file;
        "valid_samples": samples of the crop that hold audio (fewer than clip_samples for a short segment);
        "event_mask": bool [T0], the frames of playback 0 inside an annotated event (only with `event_frames`);
        "readable": False for the stand-in of an unreadable file in val/test (ON_BAD_FILE skip): its audio is silence
            and the evaluation leaves it out;
        "skipped": names of bad files met for this item (ON_BAD_FILE skip), usually empty.

    A file that decodes to less than `min_audio_fraction` of the audio its record asks for (its annotated segment, or
    `clip_samples` when the record runs to the end of its file) is a bad file too, of kind "short" (ShortAudioError):
    a partial download would otherwise train and test as padding.

    An unreadable file (ON_BAD_FILE skip) is replaced by another clip in training, so every batch stays full; in
    val/test it is never replaced (a substitute would score another clip twice): the item comes back with
    "readable" False and the evaluation counts and names it.

    In test mode the dataset has len(records) * num_views items; item j is view j % V of record j // V.
    `num_listed` is the size of the annotation list before clips whose audio is absent were left out (the
    evaluation reports it next to the clips it scores).
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        reader: Callable[[ClipRecord], np.ndarray],
        *,
        mode: str,
        clip_samples: int,
        sample_rate: int,
        label_format: LabelFormat,
        num_classes: int,
        num_views: int = 1,
        pyramid: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
        seed: int = 0,
        skip_bad_files: bool = False,
        max_substitutes: int = 10,
        event_frames: Callable[[ClipRecord, float], torch.Tensor] | None = None,
        num_listed: int | None = None,
        min_audio_fraction: float = 0.0,
    ) -> None:
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be train, val or test, not {mode!r}")
        if not records:
            raise ValueError("the dataset has no records; check the annotation file")
        self.records = list(records)
        self.reader = reader
        self.mode = mode
        self.clip_samples = clip_samples
        self.sample_rate = sample_rate
        self.label_format = label_format
        self.num_classes = num_classes
        self.num_views = num_views if mode == "test" else 1
        self.pyramid = pyramid
        self.seed = seed
        self.skip_bad_files = skip_bad_files
        self.event_frames = event_frames
        self.max_substitutes = max_substitutes
        self.num_listed = len(self.records) if num_listed is None else num_listed
        self.min_audio_fraction = min_audio_fraction
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the training crops of `epoch` (call before iterating; workers are re-created per epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) * self.num_views

    def _load(self, record_index: int, view: int, rng: np.random.Generator | None) -> tuple[np.ndarray, float, int]:
        """(crop [clip_samples], crop start in seconds from the start of the file, valid samples of the crop)."""
        record = self.records[record_index]
        segment = self.reader(record)
        self._check_length(record, segment.shape[0])
        start = crop_start(segment.shape[0], self.clip_samples, self.mode, view, self.num_views, rng)
        crop, valid = crop_or_pad(segment, start, self.clip_samples)
        return crop, record.start_s + start / self.sample_rate, valid

    def _check_length(self, record: ClipRecord, samples: int) -> None:
        """Raise ShortAudioError when `samples` is below min_audio_fraction of what the record asks for."""
        annotated = record.stop_s is not None
        expected = round((record.stop_s - record.start_s) * self.sample_rate) if annotated else self.clip_samples
        if samples < self.min_audio_fraction * expected:
            rate = self.sample_rate
            raise ShortAudioError(
                f"{ShortAudioError.KIND}: clip {record.uid} ({record.source}) decodes to {samples / rate:.2f} s of "
                f"audio, but its {'annotation' if annotated else 'clip length'} says {expected / rate:.2f} s (below "
                f"DATA_LOADER.MIN_AUDIO_FRACTION {self.min_audio_fraction:g}): a partial download or a cut file; "
                "re-extract it"
            )

    def _load_training_item(self, item: int, draws: list[int]) -> tuple[int, tuple[np.ndarray, float, int], list[str]]:
        """(record index, loaded crop, messages of the bad files replaced on the way); `draws` joins the crop's seed."""
        skipped: list[str] = []
        for attempt in range(self.max_substitutes + 1):
            # Substitutes are a deterministic function of the item so that a resumed run sees the same data.
            index = (item + attempt * 7919) % len(self.records)
            rng = np.random.default_rng([self.seed, self.epoch, index, attempt, *draws])
            try:
                return index, self._load(index, 0, rng), skipped
            except AudioReadError as err:
                if not self.skip_bad_files:
                    raise
                skipped.append(str(err))
        raise AudioReadError(
            f"{self.max_substitutes + 1} consecutive bad files around item {item}; the audio folder looks broken: "
            + " | ".join(skipped[-3:])
        )

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        """Item `item`, or ``(item, draw)`` from a sampler that draws with replacement: the draw (its position in the
        epoch) joins the crop's seed, so the same clip drawn twice in an epoch gets two crops."""
        item, draws = (item[0], [item[1]]) if isinstance(item, tuple) else (item, [])
        record_index, view = divmod(item, self.num_views)
        readable = True
        if self.mode == "train":
            record_index, loaded, skipped = self._load_training_item(record_index, draws)
        else:
            try:
                loaded, skipped = self._load(record_index, view, None), []
            except AudioReadError as err:
                if not self.skip_bad_files:
                    raise
                readable, skipped = False, [str(err)]
                loaded = (np.zeros(self.clip_samples, dtype=np.float32), self.records[record_index].start_s, 0)
        waveform, crop_start_s, valid_samples = loaded
        record = self.records[record_index]
        out: dict[str, Any] = {
            "label": encode_labels(record.labels, self.label_format, self.num_classes),
            "index": record_index,
            "view": view,
            "crop_start_s": crop_start_s,
            "valid_samples": valid_samples,
            "readable": readable,
            "skipped": skipped,
        }
        if self.event_frames is not None:
            out["event_mask"] = self.event_frames(record, crop_start_s)
        wave = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
        if self.pyramid is None:
            out["waveform"] = wave
        else:
            out["playbacks"] = self.pyramid(wave, valid_samples)
        return out


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of items; "skipped" becomes one flat list of bad-file messages and "replaced" counts the items
    that stand in for a bad file."""
    per_item = [item.pop("skipped") for item in items]
    batch = torch.utils.data.default_collate(items)
    batch["skipped"] = [msg for messages in per_item for msg in messages]
    batch["replaced"] = sum(1 for messages in per_item if messages)
    return batch


def count_short(messages: Sequence[str]) -> int:
    """How many bad-file messages are short reads (ShortAudioError)."""
    return sum(1 for message in messages if message.startswith(f"{ShortAudioError.KIND}:"))

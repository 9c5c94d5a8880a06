"""Where the config meets the data path: annotation files, readers, datasets and loaders of a split."""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch.utils.data import DataLoader

from playitback.config import derived
from playitback.data.annotations import class_index_from_records, read_annotations, read_class_list
from playitback.data.audio_io import AudioReadError, FileAudioReader, Hdf5AudioReader
from playitback.data.dataset import AudioClipDataset, LabelFormat, collate
from playitback.data.events import EventFrames, load_event_spans
from playitback.data.records import ClipRecord
from playitback.data.sampler import (
    BalancedSampler,
    EvalSampler,
    TrainSampler,
    class_balanced_weights,
    read_sample_weights,
)
from playitback.data.shards import INDEX_NAME, ShardAudioReader, is_pack
from playitback.data.spectrogram import PlaybackPyramid

logger = logging.getLogger(__name__)


def label_format(cfg: CfgNode) -> LabelFormat:
    """The label format a config asks for."""
    if cfg.MODEL.MULTITASK:
        return LabelFormat.MULTITASK
    return LabelFormat.MULTI_LABEL if cfg.DATA.MULTI_LABEL else LabelFormat.SINGLE


def frontend_on_device(cfg: CfgNode) -> bool:
    """Whether spectrograms are computed batched on the training device (workers then only decode and crop)."""
    if cfg.DATA.FRONTEND == "auto":
        return cfg.NUM_GPUS > 0 and torch.cuda.is_available()
    return cfg.DATA.FRONTEND == "device"


def build_pyramid(cfg: CfgNode) -> PlaybackPyramid:
    """The playback pyramid of a config (used in the workers or on the device)."""
    return PlaybackPyramid(
        sample_rate=cfg.AUDIO_DATA.SAMPLING_RATE,
        num_playbacks=derived.num_playbacks(cfg),
        frames0=cfg.AUDIO_DATA.FRAMES0,
        window_ms=cfg.AUDIO_DATA.WINDOW_LENGTH,
        n_fft=cfg.AUDIO_DATA.N_FFT,
        n_mels=cfg.AUDIO_DATA.NUM_FREQUENCIES,
    )


def custom_class_index(cfg: CfgNode) -> dict[str, int]:
    """Class ids of a custom dataset: CUSTOM.CLASSES_FILE when it exists, else the sorted names of the train list."""
    classes_file = Path(cfg.CUSTOM.ANNOTATIONS_DIR) / cfg.CUSTOM.CLASSES_FILE
    if cfg.CUSTOM.CLASSES_FILE and classes_file.is_file():
        return read_class_list(classes_file)
    train_list = Path(cfg.CUSTOM.ANNOTATIONS_DIR) / cfg.CUSTOM.TRAIN_LIST
    return class_index_from_records(read_annotations(train_list, "custom"))


def load_split_records(cfg: CfgNode, split: str) -> list[ClipRecord]:
    """Clip records of a split (EPIC-KITCHENS train+val concatenates both lists). Every label id must fit the model's
    heads."""
    files = derived.dataset_files(cfg, split)
    class_index = custom_class_index(cfg) if files.dataset == "custom" else None
    records: list[ClipRecord] = []
    for path in files.annotation_files:
        records.extend(read_annotations(path, files.dataset, class_index=class_index,
                                        allow_unsafe_pickle=cfg.DATA.ALLOW_UNSAFE_PICKLE))
    counts = derived.class_counts(cfg)
    for record in records:
        limits = counts if cfg.MODEL.MULTITASK else counts * len(record.labels)
        if any(not 0 <= label < limit for label, limit in zip(record.labels, limits)):
            raise ValueError(
                f"{files.annotation_files[0].parent}: clip {record.uid} has label(s) {record.labels} outside the "
                f"model's classes {counts}; set MODEL.NUM_CLASSES (or MULTITASK_CLASSES) to the dataset's class count"
            )
    return records


def uses_shards(cfg: CfgNode, split: str) -> bool:
    """Whether a split reads a pack of shards (DATA.STORAGE shards, or auto and its audio location holds a pack)."""
    root = derived.dataset_files(cfg, split).audio_root
    if cfg.DATA.STORAGE == "shards" and not is_pack(root):
        raise AudioReadError(f"{root}: DATA.STORAGE is shards but this is not a pack folder (no {INDEX_NAME}); pack "
                             "the audio with tools/pack_audio.py, or set DATA.STORAGE files")
    return cfg.DATA.STORAGE == "shards" or (cfg.DATA.STORAGE == "auto" and is_pack(root))


def build_reader(cfg: CfgNode, split: str) -> FileAudioReader | Hdf5AudioReader | ShardAudioReader:
    """The audio reader of a split's dataset: a pack of shards, the files, or the EPIC-KITCHENS HDF5."""
    files = derived.dataset_files(cfg, split)
    if uses_shards(cfg, split):
        reader = ShardAudioReader(files.audio_root, cfg.AUDIO_DATA.SAMPLING_RATE)
        logger.info("%s audio: %d clips packed in %s (%s)", split, len(reader), files.audio_root, reader.storage)
        return reader
    if files.dataset == "epickitchens":
        return Hdf5AudioReader(files.audio_root, cfg.AUDIO_DATA.SAMPLING_RATE)
    return FileAudioReader(files.audio_root, files.audio_ext, cfg.AUDIO_DATA.SAMPLING_RATE)


def skip_bad_files(cfg: CfgNode, split: str) -> bool:
    """ON_BAD_FILE: skip in training and raise in evaluation unless set explicitly."""
    policy = cfg.DATA_LOADER.ON_BAD_FILE
    return split == "train" if policy == "auto" else policy == "skip"


def build_dataset(cfg: CfgNode, split: str, records: list[ClipRecord] | None = None) -> AudioClipDataset:
    """The dataset of `split` ("train", "val" or "test") as the config describes it."""
    if split not in derived.SPLITS:
        raise ValueError(f"split must be one of {derived.SPLITS}, not {split!r}")
    counts = derived.class_counts(cfg)
    return AudioClipDataset(
        load_split_records(cfg, split) if records is None else records,
        build_reader(cfg, split),
        mode=split,
        clip_samples=derived.clip_samples(cfg),
        sample_rate=cfg.AUDIO_DATA.SAMPLING_RATE,
        label_format=label_format(cfg),
        num_classes=sum(counts),
        num_views=cfg.TEST.NUM_ENSEMBLE_VIEWS,
        pyramid=None if frontend_on_device(cfg) else build_pyramid(cfg),
        seed=cfg.RNG_SEED,
        skip_bad_files=skip_bad_files(cfg, split),
        event_frames=EventFrames(load_event_spans(cfg.DATA.EVENTS_FILE), cfg.AUDIO_DATA.CLIP_SECS,
                                 cfg.AUDIO_DATA.FRAMES0) if cfg.DATA.EVENTS_FILE else None,
    )


def _worker_init(_: int) -> None:
    # Workers render spectrograms one clip at a time: one thread each avoids oversubscribing the cores.
    torch.set_num_threads(1)
    _leave_job_signals_to_the_parent()


def _leave_job_signals_to_the_parent() -> None:
    """Keep a DataLoader worker alive through the signals a job scheduler sends to every process of a job.

    SLURM signals every process of a job step: SIGTERM on preemption, the time-limit warning (SIGUSR1 from
    tools/slurm/run_net.sbatch, SIGUSR2 from submitit). The training process then saves a checkpoint at its next step,
    which needs its workers, so they leave stopping to it: the warnings are ignored, and SIGTERM ends a worker only when
    its own training process sends it (its loader shutting down, or multiprocessing at exit), as torch's worker
    handler does. Blocked in every thread, SIGTERM is taken by one waiting thread, which reads who sent it.
    """
    for warning in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(warning, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    parent = os.getppid()

    def exit_when_the_parent_terminates() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=exit_when_the_parent_terminates, name="sigterm-from-parent", daemon=True).start()


def sample_weights(cfg: CfgNode, records: list[ClipRecord]) -> np.ndarray:
    """Balanced-sampler weights of the training clips: DATA.SAMPLE_WEIGHTS_FILE, else the class-balanced rule over the
    labels with DATA.BALANCE_OFFSET (EPIC-KITCHENS: verb and noun ids count as separate labels)."""
    if cfg.DATA.SAMPLE_WEIGHTS_FILE:
        return read_sample_weights(cfg.DATA.SAMPLE_WEIGHTS_FILE, [record.uid for record in records])
    counts = derived.class_counts(cfg)
    starts = np.cumsum([0, *counts[:-1]]) if cfg.MODEL.MULTITASK else np.zeros(len(counts), dtype=int)
    labels = [[int(start) + label for start, label in zip(starts, record.labels)] if cfg.MODEL.MULTITASK
              else list(record.labels) for record in records]
    return class_balanced_weights(labels, sum(counts), cfg.DATA.BALANCE_OFFSET)


def build_train_sampler(cfg: CfgNode, dataset: AudioClipDataset, batch: int, rank: int,
                        world: int) -> TrainSampler | BalancedSampler:
    """DATA.TRAIN_SAMPLER for process `rank` of `world`: a shuffle per epoch, or SAMPLES_PER_EPOCH balanced draws."""
    if cfg.DATA.TRAIN_SAMPLER == "uniform":
        return TrainSampler(len(dataset), batch, world, rank, seed=cfg.RNG_SEED)
    return BalancedSampler(sample_weights(cfg, dataset.records), cfg.DATA.SAMPLES_PER_EPOCH or len(dataset), batch,
                           world, rank, seed=cfg.RNG_SEED)


def build_loader(cfg: CfgNode, dataset: AudioClipDataset, split: str, rank: int = 0, world: int = 1) -> DataLoader:
    """DataLoader of a split for process `rank` of `world`: the resumable training sampler of DATA.TRAIN_SAMPLER,
    every item exactly once (no padding, no shuffle) for evaluation."""
    total = cfg.TRAIN.BATCH_SIZE if split != "test" else cfg.TEST.BATCH_SIZE
    batch = derived.per_process_batch(total, world)
    if split == "train":
        sampler = build_train_sampler(cfg, dataset, batch, rank, world)
    else:
        sampler = EvalSampler(len(dataset), world, rank)
    workers = cfg.DATA_LOADER.NUM_WORKERS
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=cfg.DATA_LOADER.PIN_MEMORY and torch.cuda.is_available(),
        collate_fn=collate,
        worker_init_fn=_worker_init if workers > 0 else None,
        persistent_workers=False,
        # The loader's own seed stream must not consume the global torch RNG (exact resumption).
        generator=torch.Generator().manual_seed(cfg.RNG_SEED),
        drop_last=False,
    )


"""Where the config meets the data path: annotation files, readers, datasets and loaders of a split."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch.utils.data import DataLoader

from playitback.config import derived
from playitback.data.annotations import (
    AnnotationError,
    class_index_from_records,
    read_annotations,
    read_class_list,
    records_carry_ids,
)
from playitback.data.audio_io import AudioReadError, FileAudioReader, Hdf5AudioReader
from playitback.data.dataset import AudioClipDataset, LabelFormat, collate
from playitback.data.events import EventFrames, load_event_spans
from playitback.data.labels import LabelSpace
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
from playitback.utils import distributed as du
from playitback.utils.errors import UserError

logger = logging.getLogger(__name__)
_STAT_THREADS = 32


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


def build_label_space(cfg: CfgNode, records: list[ClipRecord] = ()) -> LabelSpace:
    """The label space of the config (MODEL.NUM_CLASSES, or MODEL.MULTITASK_CLASSES as verb and noun;
    DATA.MULTI_LABEL), with the class names that `records` give."""
    counts = tuple(derived.class_counts(cfg))
    tasks = ("verb", "noun") if cfg.MODEL.MULTITASK else ("class",)
    return LabelSpace(counts, bool(cfg.DATA.MULTI_LABEL), tasks).named_from(records)


def build_pyramid(cfg: CfgNode) -> PlaybackPyramid:
    """The playback pyramid of a config (used in the workers or on the device)."""
    return PlaybackPyramid(
        sample_rate=cfg.AUDIO_DATA.SAMPLING_RATE,
        num_playbacks=derived.num_playbacks(cfg),
        frames0=cfg.AUDIO_DATA.FRAMES0,
        window_ms=cfg.AUDIO_DATA.WINDOW_LENGTH,
        n_fft=cfg.AUDIO_DATA.N_FFT,
        n_mels=cfg.AUDIO_DATA.NUM_FREQUENCIES,
        pad_mode=cfg.AUDIO_DATA.PAD_MODE,
        window_scaling=cfg.AUDIO_DATA.WINDOW_SCALING,
        style=cfg.AUDIO_DATA.FEATURE_STYLE,
    )


@dataclass(frozen=True)
class ClassMap:
    """The one class name -> id map of a run, and where it came from (for messages)."""

    index: dict[str, int]
    source: str


def run_class_index(cfg: CfgNode, split: str) -> ClassMap | None:
    """The name -> id map that every split of a VGG-Sound or custom dataset uses (None for AudioSet and EPIC-KITCHENS,
    whose files carry fixed ids).

    In order: ``<DATASET>.CLASSES_FILE`` in the annotations folder when it exists; else the train list's own ids when
    it stores them (pickles, project CSVs), or the sorted names of the train list when it does not; for a run whose
    train list is absent (testing only), the ids stored in the split's own list.

    Raises:
        AnnotationError: No source fixes the ids: the split's list stores none and neither the classes file nor the
            train list exists (ids from that one file's sorted names would not match a model trained on another
            list).
    """
    dataset = derived.split_dataset(cfg, split)
    if dataset not in ("vggsound", "custom"):
        return None
    node = cfg[dataset.upper()]
    folder = Path(node.ANNOTATIONS_DIR)
    key = f"{dataset.upper()}."
    if node.CLASSES_FILE and (folder / node.CLASSES_FILE).is_file():
        return ClassMap(read_class_list(folder / node.CLASSES_FILE), f"{key}CLASSES_FILE {folder / node.CLASSES_FILE}")
    train_list = folder / node.TRAIN_LIST
    source = train_list
    if not train_list.is_file():
        source = folder / node[{"train": "TRAIN_LIST", "val": "VAL_LIST", "test": "TEST_LIST"}[split]]
        if source.is_file() and not records_carry_ids(source):
            raise AnnotationError(
                f"{source}: this list stores no class ids, and neither {key}CLASSES_FILE ({folder / node.CLASSES_FILE})"
                f" nor {key}TRAIN_LIST ({train_list}) exists to fix them; ids from this one file's sorted names would "
                "not match a model trained on another list (the original VGG-Sound test.csv read alone matches the "
                "ids of test.pkl on 50 of 15,446 clips). Write the classes file (tools/prepare_annotations.py "
                "--classes-out) or use a list that stores ids (a pickle or a project CSV)"
            )
    records = read_annotations(source, dataset, allow_unsafe_pickle=cfg.DATA.ALLOW_UNSAFE_PICKLE)
    what = "the train list" if source == train_list else "the list"
    return ClassMap(class_index_from_records(records), f"{what} {source}")


def load_split_records(cfg: CfgNode, split: str) -> list[ClipRecord]:
    """Clip records of a split (EPIC-KITCHENS train+val concatenates both lists), with the run's class ids
    (:func:`run_class_index`). Every label id must fit the model's heads."""
    files = derived.dataset_files(cfg, split)
    class_map = run_class_index(cfg, split)
    records: list[ClipRecord] = []
    for path in files.annotation_files:
        try:
            records.extend(read_annotations(path, files.dataset, class_index=class_map and class_map.index,
                                            allow_unsafe_pickle=cfg.DATA.ALLOW_UNSAFE_PICKLE))
        except AnnotationError as err:
            if class_map is None:
                raise
            raise AnnotationError(f"{err} (the run's class map comes from {class_map.source})") from None
    counts = derived.class_counts(cfg)
    for record in records:
        limits = counts if cfg.MODEL.MULTITASK else counts * len(record.labels)
        if any(not 0 <= label < limit for label, limit in zip(record.labels, limits)):
            raise AnnotationError(
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
        return Hdf5AudioReader(files.audio_root, cfg.AUDIO_DATA.SAMPLING_RATE,
                               cfg.EPICKITCHENS.AUDIO_SAMPLE_RATE or None)
    return FileAudioReader(files.audio_root, files.audio_ext, cfg.AUDIO_DATA.SAMPLING_RATE)


def skip_bad_files(cfg: CfgNode, split: str) -> bool:
    """ON_BAD_FILE: skip in training and raise in evaluation unless set explicitly."""
    policy = cfg.DATA_LOADER.ON_BAD_FILE
    return split == "train" if policy == "auto" else policy == "skip"


class MissingAudioError(UserError, RuntimeError):
    """Too few of a split's listed clips have their audio on disk."""


def _file_check_cache(output_dir: Path, key: str) -> Path:
    return output_dir / "file_check" / f"{key}.json"


AudioReader = FileAudioReader | Hdf5AudioReader | ShardAudioReader


def present_records(cfg: CfgNode, split: str, records: list[ClipRecord], reader: AudioReader,
                    output_dir: Path | None = None) -> list[ClipRecord]:
    """The records whose audio exists (DATA.CHECK_FILES), logged as "N of M clips found".

    Real AudioSet and VGG-Sound copies miss 5-20% of their clips; those are left out here, once, instead of failing
    to read every epoch. With `output_dir`, the absent clips are listed in ``output_dir/missing_<split>.txt`` and the
    check is cached in ``output_dir/file_check/`` under a key of the list, the audio root and the modification times
    of its folders (a restarted or requeued job does not stat every file again; adding a file invalidates it). The
    main process checks and the others receive its answer.

    Raises:
        MissingAudioError: Fewer than DATA.MIN_FOUND_FRACTION of the clips are present (the message names the first
            absent file and the keys to check).
    """
    files = derived.dataset_files(cfg, split)
    key_parts = [files.dataset, *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files.annotation_files),
                 len(records), reader.cache_key(records)]
    key = hashlib.sha256(json.dumps(key_parts, default=str).encode()).hexdigest()[:20]
    absent: list[bool] | None = None
    if du.is_main_process():
        cache = _file_check_cache(output_dir, key) if output_dir is not None else None
        if cache is not None and cache.is_file():
            absent = json.loads(cache.read_text())["absent"]
        else:
            absent = _absent(reader, records)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps({"absent": absent}))
    absent = du.broadcast_object(absent)
    kept = [record for record, gone in zip(records, absent, strict=True) if not gone]
    missing = [record for record, gone in zip(records, absent, strict=True) if gone]
    where = reader.path if isinstance(reader, Hdf5AudioReader) else reader.root  # the file, or the folder
    listing = ""
    if missing and output_dir is not None:
        listing = f", listed in {output_dir / f'missing_{split}.txt'}"
        if du.is_main_process():
            (output_dir / f"missing_{split}.txt").write_text(
                "".join(f"{record.uid}\t{_audio_location(reader, record)}\n" for record in missing))
    logger.info("%s: %d of %d clips found under %s (%d missing%s)", split, len(kept), len(records), where,
                len(missing), listing)
    minimum = cfg.DATA.MIN_FOUND_FRACTION
    if not kept or len(kept) < minimum * len(records):
        raise MissingAudioError(
            f"{split}: only {len(kept)} of {len(records)} listed clips have their audio under {where} (first absent: "
            f"{_audio_location(reader, missing[0])}), fewer than DATA.MIN_FOUND_FRACTION ({minimum}); check "
            f"{files.dataset.upper()}.AUDIO_DATA_DIR / AUDIO_EXT (AUDIO_DATA_FILE for EPIC-KITCHENS) and the "
            "annotation list, or lower DATA.MIN_FOUND_FRACTION"
        )
    return kept


def _absent(reader: AudioReader, records: list[ClipRecord]) -> list[bool]:
    """Whether each record's audio is absent; file checks are stat calls that wait on the file system (seconds each on
    a busy network share), so they run in threads."""
    if isinstance(reader, FileAudioReader):
        with ThreadPoolExecutor(_STAT_THREADS) as pool:
            return [not found for found in pool.map(reader.has_audio, records, chunksize=256)]
    return [not reader.has_audio(record) for record in records]


def _audio_location(reader: AudioReader, record: ClipRecord) -> str:
    if isinstance(reader, FileAudioReader):
        return str(reader.path(record))
    return f"{reader.path if isinstance(reader, Hdf5AudioReader) else reader.root} [{record.source}]"


def build_dataset(cfg: CfgNode, split: str, records: list[ClipRecord] | None = None,
                  output_dir: Path | None = None) -> AudioClipDataset:
    """The dataset of `split` ("train", "val" or "test") as the config describes it.

    Without `records`, the split's annotation list is read and (DATA.CHECK_FILES) the clips whose audio is absent are
    left out (:func:`present_records`; `output_dir` receives the list of absent clips and the check's cache).
    """
    if split not in derived.SPLITS:
        raise ValueError(f"split must be one of {derived.SPLITS}, not {split!r}")
    counts = derived.class_counts(cfg)
    reader = build_reader(cfg, split)
    num_listed = None
    if records is None:
        records = load_split_records(cfg, split)
        num_listed = len(records)
        if cfg.DATA.CHECK_FILES:
            records = present_records(cfg, split, records, reader, output_dir)
        if isinstance(reader, Hdf5AudioReader):
            reader.check_lengths(records)
    return AudioClipDataset(
        records,
        reader,
        mode=split,
        clip_samples=derived.clip_samples(cfg),
        sample_rate=cfg.AUDIO_DATA.SAMPLING_RATE,
        label_format=label_format(cfg),
        num_classes=sum(counts),
        num_views=cfg.TEST.NUM_ENSEMBLE_VIEWS,
        pyramid=None if frontend_on_device(cfg) else build_pyramid(cfg),
        seed=cfg.RNG_SEED,
        skip_bad_files=skip_bad_files(cfg, split),
        # T0 hops of playback 0 (not CLIP_SECS, which the rounded hop does not divide exactly): frame k is then centred
        # on sample k * hop, as the STFT centres it.
        event_frames=EventFrames(load_event_spans(cfg.DATA.EVENTS_FILE),
                                 cfg.AUDIO_DATA.FRAMES0 * derived.playback_hop(cfg, 0) / cfg.AUDIO_DATA.SAMPLING_RATE,
                                 cfg.AUDIO_DATA.FRAMES0) if cfg.DATA.EVENTS_FILE else None,
        num_listed=num_listed,
        min_audio_fraction=cfg.DATA_LOADER.MIN_AUDIO_FRACTION,
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
    every item exactly once (no padding, no shuffle) for evaluation. A training batch is TRAIN.BATCH_SIZE / (world *
    TRAIN.ACCUMULATION_STEPS) clips, an evaluation batch TRAIN.BATCH_SIZE (val) or TEST.BATCH_SIZE / world."""
    if split == "train":
        # TRAIN.BATCH_SIZE is the global batch of one optimiser step, TRAIN.ACCUMULATION_STEPS loader batches each.
        batch = derived.per_process_batch(cfg.TRAIN.BATCH_SIZE, world * cfg.TRAIN.ACCUMULATION_STEPS)
    else:
        batch = derived.per_process_batch(cfg.TRAIN.BATCH_SIZE if split == "val" else cfg.TEST.BATCH_SIZE, world)
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


"""Values that follow from several config keys, as pure functions of the config (never written back into it)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fvcore.common.config import CfgNode

from playitback.utils import distributed as du

DATASETS = ("vggsound", "audioset", "epickitchens", "custom")
SPLITS = ("train", "val", "test")


def is_encoder_only(cfg: CfgNode) -> bool:
    """True for the encoder-pretraining stage and the encoder-only baseline (no saliency, replay or decoder)."""
    return bool(cfg.MODEL.IGNORE_DECODER) or cfg.MODEL.PLAYBACK == 0


def num_playbacks(cfg: CfgNode) -> int:
    """Number of playback spectrograms a clip is rendered at: PLAYBACK + 1, or 1 for the encoder only."""
    return 1 if is_encoder_only(cfg) else cfg.MODEL.PLAYBACK + 1


def class_counts(cfg: CfgNode) -> list[int]:
    """Classes per head: [NUM_CLASSES], or MULTITASK_CLASSES (EPIC-KITCHENS verb, noun)."""
    return [int(c) for c in cfg.MODEL.MULTITASK_CLASSES] if cfg.MODEL.MULTITASK else [int(cfg.MODEL.NUM_CLASSES)]


def clip_samples(cfg: CfgNode) -> int:
    """Samples in one crop: round(SAMPLING_RATE * CLIP_SECS)."""
    return int(round(cfg.AUDIO_DATA.SAMPLING_RATE * cfg.AUDIO_DATA.CLIP_SECS))


def saliency_resolution(cfg: CfgNode) -> int:
    """Length of the slot vectors (the original's hard-coded 400, i.e. FRAMES0 by default)."""
    return int(cfg.SALIENCY.RESOLUTION) or int(cfg.AUDIO_DATA.FRAMES0)


def world_size(cfg: CfgNode) -> int:
    """Processes in the job, as the launch will start them (the one rule of
    :func:`playitback.utils.distributed.job_layout`: the launcher's world under torchrun or a multi-task srun, else
    max(NUM_GPUS, 1) processes on each of NUM_SHARDS machines)."""
    return du.job_layout(int(cfg.NUM_GPUS), int(cfg.NUM_SHARDS)).world


def base_lr(cfg: CfgNode) -> float:
    """The peak LR of the run: BASE_LR, scaled to the global batch when SOLVER.BASE_LR_BATCH_SIZE is set.

    TRAIN.BATCH_SIZE is the global batch (all processes of all machines), so the LR depends on it alone, never on how
    many machines share it: ``BASE_LR * (TRAIN.BATCH_SIZE / BASE_LR_BATCH_SIZE)`` (linear rule) or its square root
    (sqrt rule). The original's SOLVER.BASE_LR_SCALE_NUM_SHARDS multiplied by NUM_SHARDS because its BATCH_SIZE was
    per machine; that is BASE_LR_BATCH_SIZE = the per-machine batch here.
    """
    if not cfg.SOLVER.BASE_LR_BATCH_SIZE:
        return float(cfg.SOLVER.BASE_LR)
    ratio = cfg.TRAIN.BATCH_SIZE / cfg.SOLVER.BASE_LR_BATCH_SIZE
    return float(cfg.SOLVER.BASE_LR) * (math.sqrt(ratio) if cfg.SOLVER.BASE_LR_SCALE_RULE == "sqrt" else ratio)


def playback_hop(cfg: CfgNode, playback: int) -> int:
    """Hop in samples of playback i: round(clip samples / (FRAMES0 * (i + 1)))."""
    return int(round(clip_samples(cfg) / (cfg.AUDIO_DATA.FRAMES0 * (playback + 1))))


def window_samples(cfg: CfgNode) -> int:
    """STFT window length in samples."""
    return int(round(cfg.AUDIO_DATA.WINDOW_LENGTH * cfg.AUDIO_DATA.SAMPLING_RATE / 1000))


def split_dataset(cfg: CfgNode, split: str) -> str:
    """Dataset name of a split: TRAIN.DATASET for train and val, TEST.DATASET for test."""
    return (cfg.TEST.DATASET if split == "test" else cfg.TRAIN.DATASET).lower()


@dataclass(frozen=True)
class DatasetFiles:
    """Where a split's annotations and audio are."""

    dataset: str
    annotation_files: tuple[Path, ...]
    audio_root: Path  # a folder of files, or the EPIC-KITCHENS HDF5 file
    audio_ext: str  # "" for HDF5
    # The stem of the split's score files (OUTPUT_DIR/scores/<name>.npz): EPIC-KITCHENS names them after the split its
    # challenge reads (EPICKITCHENS.TEST_SPLIT: validation or test), every other dataset "test".
    scores_name: str = "test"


def dataset_files(cfg: CfgNode, split: str) -> DatasetFiles:
    """Annotation file(s) and audio location of a split (EPIC-KITCHENS train+val concatenates two lists)."""
    dataset = split_dataset(cfg, split)
    node = cfg[dataset.upper()]
    list_key = {"train": "TRAIN_LIST", "val": "VAL_LIST", "test": "TEST_LIST"}[split]
    lists = [node[list_key]]
    if dataset == "epickitchens" and split == "train" and node.TRAIN_PLUS_VAL:
        lists.append(node.VAL_LIST)
    annotations = tuple(Path(node.ANNOTATIONS_DIR) / name for name in lists)
    if dataset == "epickitchens":
        return DatasetFiles(dataset, annotations, Path(node.AUDIO_DATA_FILE), "", node.TEST_SPLIT)
    return DatasetFiles(dataset, annotations, Path(node.AUDIO_DATA_DIR), node.AUDIO_EXT)


def per_process_batch(total: int, world: int) -> int:
    """Per-process batch size of a total batch split over `world` processes (validated divisible)."""
    return max(total // world, 1)


def iters_per_epoch(num_items: int, batch: int, drop_last: bool) -> int:
    """Iterations of one epoch over `num_items` items."""
    return num_items // batch if drop_last else math.ceil(num_items / batch)

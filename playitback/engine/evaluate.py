"""Evaluation over built objects: every item of a split once over all processes, views ensembled per clip, metrics
over the label space, and what a test writes (scores, per-class AP, replayed segments). No config is read here.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from playitback.data.dataset import AudioClipDataset, count_short
from playitback.data.labels import LabelSpace
from playitback.engine.reproducibility import PER_CLASS_FILE, write_per_class_csv
from playitback.engine.task import ClassificationTask
from playitback.metrics import ViewEnsemble, classification_metrics
from playitback.utils import distributed as du

logger = logging.getLogger(__name__)

BAD_FILES = "bad_files.txt"


@dataclass
class Evaluation:
    """What :func:`evaluate` returns.

    Attributes:
        metrics: the metrics of the label space, "loss", and how many clips they cover ("clips", "clips_unreadable",
            "clips_missing", "clips_listed"); on every process.
        scores: [N, K] ensembled scores of the N scored clips (main process; empty elsewhere).
        per_view: [N, V, K] the scores of every view.
        labels: the labels of the scored clips.
        uids: their clip ids.
        segments: with collect_segments, the replayed segments of every clip, view and replay.
        playback_scores: [N, S, K] the ensembled logits of each playback alone (PlayItBack's playback_logits: what an
            anytime exit after playback p predicts); empty for the encoder alone.
    """

    metrics: dict[str, float]
    scores: Tensor = field(default_factory=lambda: torch.empty(0))
    per_view: Tensor = field(default_factory=lambda: torch.empty(0))
    labels: Tensor = field(default_factory=lambda: torch.empty(0))
    uids: list[str] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    playback_scores: Tensor = field(default_factory=lambda: torch.empty(0))


@torch.no_grad()
def evaluate(task: ClassificationTask, loader: Iterable[dict[str, Any]], dataset: AudioClipDataset,
             label_space: LabelSpace, output_dir: str | Path, *, ensemble_method: str = "sum",
             collect_segments: bool = False, split: str = "val") -> Evaluation:
    """Run the model over an evaluation split, ensemble the views of each clip and compute the metrics on the main
    process (broadcast to all).

    Items whose file could not be decoded (ON_BAD_FILE skip) are left out, named in output_dir/bad_files.txt and
    counted; the metrics then say how many clips they cover.

    Args:
        task: the evaluation task (its model, front-end and loss).
        loader: the split's loader (every item once over all processes).
        dataset: the split's dataset (records, views, clip length).
        label_space: what the scores mean.
        output_dir: where bad_files.txt goes.
        ensemble_method: "sum" or "max" over the views of a clip.
        collect_segments: also return the replayed segments (a model that replays).
        split: the split's name, for the log.
    """
    model = task.model
    model.eval()
    local: dict[str, list[Any]] = defaultdict(list)
    loss_sum = torch.zeros((), device=task.device)
    count = 0
    clip_seconds = dataset.clip_samples / dataset.sample_rate
    for batch in loader:
        outputs, losses, _ = task.step(batch, train=False)
        readable = batch["readable"]
        local["bad_files"].extend(batch["skipped"])
        loss_sum += losses["loss"] * batch["label"].shape[0]
        count += batch["label"].shape[0]
        local["index"].append(batch["index"][readable])
        local["view"].append(batch["view"][readable])
        local["scores"].append(outputs.logits.cpu()[readable])
        if outputs.playback_logits is not None:
            local["playback_scores"].append(outputs.playback_logits.transpose(0, 1).flatten(1).cpu()[readable])
        local["labels"].append(batch["label"][readable])
        if collect_segments and outputs.has_replay:
            uids = [dataset.records[int(i)].uid for i in batch["index"]]
            segments = task.replayed_segments(outputs, batch, uids, clip_seconds)
            keep = readable.repeat_interleave(outputs.replay_masks.shape[1]).tolist()
            local["segments"].extend(s for s, ok in zip(segments, keep) if ok)
    merged = {key: (torch.cat(value) if key not in ("segments", "bad_files") else value)
              for key, value in local.items()}
    gathered = du.all_gather_objects(merged)
    totals = du.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(count), device=task.device)]))
    result = Evaluation(metrics={})
    if du.is_main_process():
        bad_files = sorted({msg for part in gathered for msg in part.get("bad_files", [])})
        ensemble = ViewEnsemble(len(dataset.records), dataset.num_views, label_space.num_outputs, ensemble_method)
        for part in gathered:
            if part:
                ensemble.add(part["index"], part["view"], part["scores"], part["labels"])
        ensembled = ensemble.finalize()
        scored = ensembled.received
        playback_scores = torch.empty(0)
        with_playbacks = [part for part in gathered if part.get("playback_scores") is not None]
        if with_playbacks:
            per_playback = ViewEnsemble(len(dataset.records), dataset.num_views,
                                        with_playbacks[0]["playback_scores"].shape[1], ensemble_method)
            for part in gathered:
                if part:
                    per_playback.add(part["index"], part["view"], part["playback_scores"], part["labels"])
            playback_scores = per_playback.finalize().scores[scored].unflatten(1, (-1, label_space.num_outputs))
        metrics = classification_metrics(ensembled.scores[scored], ensembled.labels[scored], label_space)
        # The loss of an unreadable item is that of silence; it stays in the average like every other view.
        metrics["loss"] = float(totals[0] / totals[1].clamp_min(1))
        metrics.update(_coverage(output_dir, dataset, int(scored.sum()), bad_files, split))
        result = Evaluation(metrics, ensembled.scores[scored], ensembled.per_view[scored], ensembled.labels[scored],
                            [r.uid for r, ok in zip(dataset.records, scored.tolist()) if ok],
                            sorted((s for part in gathered for s in part.get("segments", [])),
                                   key=lambda s: (s["video"], s["view"], s["playback"])),
                            playback_scores)
    result.metrics = du.broadcast_object(result.metrics)
    return result


def _coverage(output_dir: str | Path, dataset: AudioClipDataset, scored: int, bad_files: list[str],
              split: str) -> dict[str, float]:
    """How many clips an evaluation's metrics cover; names the unreadable files in output_dir/bad_files.txt."""
    unreadable = len(dataset.records) - scored
    if bad_files:
        with open(Path(output_dir) / BAD_FILES, "a") as handle:
            handle.writelines(msg + "\n" for msg in bad_files)
        logger.warning("%s: %d clip(s) could not be read and are left out of the metrics (see %s); first: %s",
                       split, unreadable, Path(output_dir) / BAD_FILES, bad_files[0])
    missing = dataset.num_listed - len(dataset.records)
    if unreadable or missing:
        logger.warning("%s metrics cover %d of the %d listed clips (%d absent at start, %d unreadable)", split,
                       scored, dataset.num_listed, missing, unreadable)
    return {"clips": float(scored), "clips_unreadable": float(unreadable), "clips_short": float(count_short(bad_files)),
            "clips_missing": float(missing), "clips_listed": float(dataset.num_listed)}


def write_scores(scores_dir: str | Path, evaluation: Evaluation, label_space: LabelSpace, name: str = "test",
                 extra_scores_path: str | Path | None = None, write_segments: bool = False) -> Path:
    """What a test leaves behind, under `scores_dir`: <name>.npz (scores, per-view scores, labels, clip ids, and for
    PlayItBack each playback's scores; numpy, no pickle), per_class.csv (the AP of every class) and, with `write_segments`, segments.jsonl; also scores and
    labels at `extra_scores_path` (TEST.SAVE_RESULTS_PATH) when given. Returns scores_dir."""
    scores_dir = Path(scores_dir)
    scores_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"scores": evaluation.scores.numpy(), "per_view": evaluation.per_view.numpy(),
              "labels": evaluation.labels.numpy(), "uids": np.array(evaluation.uids)}
    if evaluation.playback_scores.numel():
        arrays["playback_scores"] = evaluation.playback_scores.numpy()
    np.savez(scores_dir / f"{name}.npz", **arrays)
    if extra_scores_path:
        np.savez(extra_scores_path, scores=evaluation.scores.numpy(), labels=evaluation.labels.numpy())
    write_per_class_csv(scores_dir / PER_CLASS_FILE, evaluation.scores, evaluation.labels, label_space)
    if write_segments:
        with open(scores_dir / "segments.jsonl", "w") as handle:
            for record in evaluation.segments:
                handle.write(json.dumps(record) + "\n")
    logger.info("scores written to %s", scores_dir)
    return scores_dir

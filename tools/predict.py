#!/usr/bin/env python
"""Tag audio files with a trained PlayItBack (or encoder-only) model: top-k labels per file and per window.

Any rate, mono or stereo, any length: files are decoded with soundfile, down-mixed and resampled to the config's rate.
A file longer than the config's clip is tagged in windows of one clip every --hop seconds (the last window ends at
the end of the file); the file's scores are the mean over its windows. A file shorter than a clip is zero-padded.

Examples:
    python tools/predict.py --cfg configs/VGG-Sound/PlayItBackX2.yaml --checkpoint x2.pyth clips/ dog.wav
    python tools/predict.py --cfg ... --checkpoint ... --classes classes.txt --top-k 3 --hop 2 --json out.json long.flac
    python tools/predict.py --cfg ... --checkpoint ... --plot figs/ --embeddings emb.npy --device cuda clips/
    python tools/predict.py --cfg ... --checkpoint ... clips/ VGGSOUND.ANNOTATIONS_DIR data/VGG-Sound
    python tools/predict.py --cfg ... --checkpoint ... clips/ TEST.EXIT_POLICY max_prob TEST.EXIT_THRESHOLD 0.42

With TEST.EXIT_POLICY (anytime inference, docs/anytime.md) each window stops after its first confident playback and
pays only the playbacks it ran; the JSON gives its "exit_playback", and its saliency and replayed segments are left
out (the early-exit forward keeps the prediction only).

Class names come from --classes (one name per line, in class-id order), else from the config's annotation files when
they exist, else the class ids are printed. Unreadable files are reported and skipped; the exit status is 1 when any
input failed, 2 for a config or checkpoint that cannot be used.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fvcore.common.config import CfgNode

from playitback.config import ConfigError, derived, load_config
from playitback.data.annotations import AnnotationError, class_names_from_records
from playitback.data.audio_io import AUDIO_EXTENSIONS, AudioReadError, read_audio_file
from playitback.data.build import build_pyramid, load_split_records
from playitback.engine.checkpoint_files import CheckpointError
from playitback.inference import (
    CropAnalysis,
    analyse_crops,
    crop_windows,
    load_inference_model,
    stitch_windows,
)
from playitback.utils.cli import find_files, split_overrides
from playitback.visualization import plot_replay

_TASK_NAMES = {"epickitchens": ("verb", "noun")}


class InputError(ValueError):
    """An input path that yields no audio; the message names it."""


@dataclass
class FileResult:
    """Predictions for one recording.

    Attributes:
        path: The audio file.
        duration_s: Its length in seconds.
        windows: One analysis per window, in time order.
        probabilities: [K] mean of the windows' probabilities.
        features: [D] mean of the windows' fused decoder features (the embedding).
    """

    path: Path
    duration_s: float
    windows: list[CropAnalysis] = field(default_factory=list)
    probabilities: np.ndarray | None = None
    features: np.ndarray | None = None


def read_class_file(path: str | Path, num_classes: int) -> list[str]:
    """Class names from a text file, one per line in class-id order (blank lines ignored).

    Raises:
        InputError: The file is missing or does not hold exactly `num_classes` names.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--classes {path}: file not found")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != num_classes:
        raise InputError(
            f"--classes {path}: {len(names)} names for a model with {num_classes} classes; give one name per line, "
            "in class-id order (verbs then nouns for EPIC-KITCHENS)"
        )
    return names


def class_names_from_config(cfg: CfgNode) -> list[str] | None:
    """Names of every output (tasks concatenated) from the config's annotation files, or None when none exist.

    Multi-task outputs (EPIC-KITCHENS) are named ``verb:<name>`` / ``noun:<name>``; ids missing from the files are
    named by their id.
    """
    counts = derived.class_counts(cfg)
    records = []
    for split in derived.SPLITS:
        if not all(path.is_file() for path in derived.dataset_files(cfg, split).annotation_files):
            continue
        try:
            records.extend(load_split_records(cfg, split))
        except AnnotationError as err:
            logging.getLogger(__name__).warning("class names: skipping the %s annotations: %s", split, err)
    if not records:
        return None
    if len(counts) == 1:
        return class_names_from_records(records, counts[0])
    task_names = _TASK_NAMES.get(derived.split_dataset(cfg, "test"), tuple(f"task{t}" for t in range(len(counts))))
    names = [[f"{task_names[t]}:{i}" for i in range(count)] for t, count in enumerate(counts)]
    for record in records:
        for task, (label, name) in enumerate(zip(record.labels, record.label_names, strict=False)):
            if task < len(counts) and 0 <= label < counts[task]:
                names[task][label] = f"{task_names[task]}:{name}"
    return [name for task in names for name in task]


def top_k(probabilities: np.ndarray, names: Sequence[str], k: int) -> list[dict[str, object]]:
    """The k most probable classes, highest first: [{"class_id", "label", "probability"}]."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"class_id": int(i), "label": names[i], "probability": float(probabilities[i])} for i in order]


def _batches(files: Sequence[Path], cfg: CfgNode, hop_s: float, batch_size: int,
             problems: list[tuple[Path, str]], durations: list[float]
             ) -> Iterator[tuple[torch.Tensor, list[tuple[int, float, int]]]]:
    """Windows of every readable file, `batch_size` at a time: (crops [B, N], (file index, start_s, samples of audio)
    per row). Each file's duration in seconds (NaN when unreadable) goes to `durations` as it is opened, unreadable
    files to `problems`."""
    rate = cfg.AUDIO_DATA.SAMPLING_RATE
    clip = derived.clip_samples(cfg)
    hop = max(1, int(round(hop_s * rate)))
    crops: list[torch.Tensor] = []
    owners: list[tuple[int, float, int]] = []
    for index, path in enumerate(files):
        try:
            if path.stat().st_size == 0:
                raise AudioReadError(f"{path}: empty file (0 bytes); re-extract or re-download it")
            waveform = read_audio_file(path, rate)
        except AudioReadError as err:
            problems.append((path, str(err)))
            durations.append(float("nan"))
            continue
        durations.append(waveform.shape[0] / rate)
        windows, starts, valid = crop_windows(waveform, clip, hop)
        for row, (start, samples) in enumerate(zip(starts, valid)):
            crops.append(windows[row])
            owners.append((index, start / rate, samples))
            if len(crops) == batch_size:
                yield torch.stack(crops), owners
                crops, owners = [], []
    if crops:
        yield torch.stack(crops), owners


@torch.no_grad()
def predict_files(cfg: CfgNode, model: torch.nn.Module, files: Sequence[Path], hop_s: float | None = None,
                  batch_size: int = 16) -> tuple[list[FileResult], list[tuple[Path, str]]]:
    """Run the model over every window of every file, batched across files.

    Args:
        cfg: The model's config.
        model: From :func:`playitback.inference.load_inference_model` (eval mode, on its device).
        files: Audio files.
        hop_s: Seconds between window starts; None = the clip length (no overlap).
        batch_size: Windows per forward pass.

    Returns:
        (one :class:`FileResult` per readable file in input order, (path, message) per unreadable file).
    """
    hop_s = cfg.AUDIO_DATA.CLIP_SECS if hop_s is None else hop_s
    if hop_s <= 0 or batch_size < 1:
        raise ValueError(f"--hop must be > 0 s and --batch-size >= 1, got {hop_s} and {batch_size}")
    pyramid = build_pyramid(cfg)
    problems: list[tuple[Path, str]] = []
    windows: dict[int, list[CropAnalysis]] = {}
    durations: list[float] = []
    for crops, owners in _batches(files, cfg, hop_s, batch_size, problems, durations):
        analyses = analyse_crops(cfg, model, crops, [start for _, start, _ in owners], pyramid,
                                 valid_samples=[samples for *_, samples in owners])
        for (index, *_), analysis in zip(owners, analyses):
            windows.setdefault(index, []).append(analysis)
    results = []
    for index in sorted(windows):
        parts = windows[index]
        results.append(FileResult(
            path=files[index], duration_s=durations[index], windows=parts,
            probabilities=np.mean([w.probabilities for w in parts], axis=0),
            features=np.mean([w.features for w in parts], axis=0),
        ))
    return results, problems


def results_json(results: Sequence[FileResult], problems: Sequence[tuple[Path, str]], names: Sequence[str],
                 k: int) -> dict[str, object]:
    """The JSON document of a run: per file its top-k, and per window its span, top-k and replayed segments."""
    return {
        "files": [{
            "file": str(r.path),
            "duration_s": r.duration_s,
            "top_k": top_k(r.probabilities, names, k),
            "windows": [{
                "start_s": w.start_s,
                "end_s": w.start_s + w.duration_s,
                "top_k": top_k(w.probabilities, names, k),
                "replayed_segments": w.segments,
                **({"exit_playback": w.exit_playback} if w.exit_playback is not None else {}),
            } for w in r.windows],
        } for r in results],
        "errors": [{"file": str(path), "error": message} for path, message in problems],
    }


def format_table(results: Sequence[FileResult], names: Sequence[str], k: int) -> str:
    """A terminal table: per file its top-k, then (for files of several windows) one line per window."""
    lines = []
    for r in results:
        lines.append(f"{r.path}  ({r.duration_s:.2f} s, {len(r.windows)} window{'s' if len(r.windows) > 1 else ''})")
        for rank, entry in enumerate(top_k(r.probabilities, names, k), 1):
            lines.append(f"  {rank}. {entry['probability']:6.3f}  {entry['label']}")
        if len(r.windows) > 1:
            for w in r.windows:
                best = ", ".join(f"{e['label']} {e['probability']:.2f}" for e in top_k(w.probabilities, names, k))
                lines.append(f"    [{w.start_s:8.2f} - {w.start_s + w.duration_s:8.2f} s]  {best}")
    return "\n".join(lines)


def plot_file(result: FileResult, names: Sequence[str], out_dir: str | Path) -> Path:
    """One PNG per file: the stitched log-mel of its windows, the replayed segments and the saliency curves."""
    timeline = stitch_windows(result.windows)
    best = top_k(result.probabilities, names, 1)[0]
    title = f"{result.path.name}: {best['label']} (p={best['probability']:.2f})"
    saliency = timeline.saliency if timeline.saliency.shape[0] else None
    out = Path(out_dir) / f"{result.path.stem}.png"
    return plot_replay(timeline.spectrogram, 0.0, timeline.duration_s, timeline.segments, saliency, title=title,
                       out_path=out)


def write_embeddings(results: Sequence[FileResult], out_path: str | Path) -> tuple[Path, Path]:
    """Save the file embeddings [num_files, D] (float32) and, next to it as .json, the files in row order."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    features = np.stack([r.features for r in results]).astype(np.float32) if results else np.zeros((0, 0), np.float32)
    np.save(out_path, features)
    listing = out_path.with_suffix(".json")
    listing.write_text(json.dumps([str(r.path) for r in results], indent=1))
    return out_path, listing


def select_device(name: str) -> torch.device:
    """--device: "auto" (a GPU when there is one), "cpu", "cuda" or "cuda:N".

    Raises:
        InputError: A GPU is asked for and there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return device


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="KEY VALUE config overrides go last, after the flags and the audio inputs.")
    parser.add_argument("audio", nargs="+", help="audio files and folders (searched recursively)")
    parser.add_argument("--cfg", required=True, help="the config the checkpoint was trained with")
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.pyth) with model_state")
    parser.add_argument("--classes", default=None, help="class names, one per line in class-id order")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--hop", type=float, default=None, help="seconds between windows (default: clip length)")
    parser.add_argument("--json", nargs="?", const="-", default=None,
                        help="write the results as JSON to this file (no value: to stdout instead of the table)")
    parser.add_argument("--plot", default=None, metavar="DIR", help="write one PNG per file into DIR")
    parser.add_argument("--embeddings", default=None, metavar="OUT.npy",
                        help="save the fused decoder features (one row per file) and OUT.json with the files")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    flags, opts = split_overrides(sys.argv[1:] if argv is None else argv)
    return parser.parse_args(flags, argparse.Namespace(opts=opts))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        cfg = load_config(args.cfg, list(args.opts) + ["NUM_GPUS", "0", "NUM_SHARDS", "1"])
        device = select_device(args.device)
        num_classes = sum(derived.class_counts(cfg))
        names = (read_class_file(args.classes, num_classes) if args.classes else class_names_from_config(cfg)
                 or [str(i) for i in range(num_classes)])
        model = load_inference_model(cfg, args.checkpoint, device, strict=True)
    except (ConfigError, InputError, CheckpointError, FileNotFoundError, AnnotationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    found, problems = find_files(args.audio, AUDIO_EXTENSIONS)
    files = [path for path, _ in found]
    results, unreadable = predict_files(cfg, model, files, args.hop, args.batch_size)
    problems.extend(unreadable)
    k = max(1, min(args.top_k, num_classes))
    if args.json == "-":
        print(json.dumps(results_json(results, problems, names, k), indent=1))
    else:
        if results:
            print(format_table(results, names, k))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results_json(results, problems, names, k), indent=1))
    if args.plot:
        for result in results:
            plot_file(result, names, args.plot)
    if args.embeddings:
        write_embeddings(results, args.embeddings)
    for _, message in problems:
        print(f"skipped: {message}", file=sys.stderr)
    return 1 if problems or not results else 0


if __name__ == "__main__":
    sys.exit(main())

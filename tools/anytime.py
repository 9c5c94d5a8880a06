#!/usr/bin/env python3
"""Anytime inference of a trained PlayItBack run: the accuracy-vs-cost curve, and thresholds chosen on the validation
list for target costs, measured on the test list.

Tests the run's checkpoint on its validation and test lists (each playback's scores are kept), counts the
multiply-adds of stopping after each playback, and for each exit policy (TEST.EXIT_POLICY: max_prob, margin) and
each target mean cost (a fraction of the full forward's) picks on the validation list the largest threshold that
stays within it; the test list then gives that threshold's top-1 (or mAP), mean GMACs per clip and where the clips
stopped, next to the full model and to stopping every clip after playback p. Example::

    python tools/anytime.py --run runs/small/playitback_x2 --targets 0.5 0.6 0.7 --out runs/small/anytime

Writes <out>/anytime.json (every figure), <out>/anytime.png (the curve) and prints one JSON line per calibrated
threshold. Use the chosen threshold as ``TEST.EXIT_POLICY <policy> TEST.EXIT_THRESHOLD <t>`` in a test run. Extra
``KEY VALUE`` pairs override the run's config (e.g. data paths on another machine).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from playitback.anytime import (
    anytime_point,
    calibrate_threshold,
    cost_curve,
    exit_confidence,
    playback_costs,
)
from playitback.config import ConfigError, derived, load_config
from playitback.data.build import build_label_space
from playitback.engine import trainer
from playitback.models import PlayItBack, build_model
from playitback.models.build import example_playbacks
from playitback.models.cost import stage_flops
from playitback.utils.cli import exit_on_user_error

POLICIES = ("max_prob", "margin")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="OUTPUT_DIR of a trained PlayItBack run")
    parser.add_argument("--out", type=Path, help="where the tests and the results go (default: <run>/anytime)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8],
                        help="target mean costs, fractions of the full forward's")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the run's config")
    return parser.parse_args(argv)


def _split_scores(cfg, checkpoint: Path, split: str, out: Path) -> dict[str, np.ndarray]:
    """Test the checkpoint on the run's `split` list ("val" or "test") into out/<split>; its scores file."""
    node = cfg[derived.split_dataset(cfg, "test").upper()]
    overrides = ["OUTPUT_DIR", str(out / split), "TEST.CHECKPOINT_FILE_PATH", str(checkpoint),
                 "TEST.EXIT_POLICY", "none"]
    if split == "val":
        overrides += [f"{derived.split_dataset(cfg, 'test').upper()}.TEST_LIST", node.VAL_LIST]
    split_cfg = cfg.clone()
    split_cfg.merge_from_list(overrides)
    if not (out / split / "scores" / "test.npz").is_file():
        trainer.test(split_cfg)
    with np.load(out / split / "scores" / f"{derived.dataset_files(split_cfg, 'test').scores_name}.npz") as scores:
        return dict(scores)


def anytime_study(cfg, run: Path, out: Path, targets: Sequence[float], policies: Sequence[str]) -> dict[str, Any]:
    """Every figure of the study (see the module docstring)."""
    cfg.defrost()
    cfg.OUTPUT_DIR = str(run)
    checkpoint = trainer.checkpoint_to_test(cfg)
    if checkpoint is None:
        raise ConfigError(f"{run}/checkpoints holds no checkpoint to test; give the OUTPUT_DIR of a trained run")
    model = build_model(cfg).eval()
    if not isinstance(model, PlayItBack):
        raise ConfigError(f"the run {run} is the encoder alone (MODEL.PLAYBACK 0): anytime inference stops PlayItBack "
                          "between playbacks")
    with torch.no_grad():
        flops, _ = stage_flops(model, example_playbacks(cfg, 1))
    costs = playback_costs(flops, model.num_playbacks)
    label_space = build_label_space(cfg)
    primary = label_space.primary_metric_name
    splits = {split: _split_scores(cfg, checkpoint, split, out) for split in ("val", "test")}
    tensors = {split: {key: torch.from_numpy(scores[key]) for key in ("scores", "playback_scores", "labels")}
               for split, scores in splits.items()}
    test = tensors["test"]
    playback_logits = test["playback_scores"].transpose(0, 1)
    full = anytime_point(playback_logits, test["scores"], test["labels"], label_space,
                         torch.zeros(playback_logits.shape[:2]), costs, 1.1)
    fixed_exits = [{"playback": p, "gmacs": costs[p] / 1e9, primary: anytime_point(
        playback_logits, test["scores"], test["labels"], label_space,
        torch.ones(playback_logits.shape[:2]) * (torch.arange(playback_logits.shape[0]) >= p).float()[:, None],
        costs, 0.5).metrics[primary]} for p in range(playback_logits.shape[0] - 1)]
    calibrated_on_test = trainer.validation_is_test(cfg)
    if calibrated_on_test:
        print("warning: the validation and the test lists are the same file, so the thresholds are chosen on the test "
              "clips themselves (optimistic); hold a validation list out of the training list for an honest figure")
    result: dict[str, Any] = {"run": str(run), "checkpoint": str(checkpoint), "metric": primary,
                              "calibrated_on_test_list": calibrated_on_test,
                              "full": {"gmacs": costs[-1] / 1e9, primary: full.metrics[primary]},
                              "exit_costs_gmacs": [c / 1e9 for c in costs[:-1]], "fixed_exits": fixed_exits,
                              "policies": {}}
    for policy in policies:
        confidence = {split: exit_confidence(t["playback_scores"].transpose(0, 1), label_space.class_counts,
                                             label_space.multi_label, policy) for split, t in tensors.items()}
        grid = torch.quantile(confidence["val"][:-1].flatten(), torch.linspace(0, 1, 41)).tolist() + [1.0 + 1e-6]
        curve = cost_curve(playback_logits, test["scores"], test["labels"], label_space, confidence["test"], costs,
                           grid)
        calibrated = []
        for target in targets:
            threshold = calibrate_threshold(confidence["val"], costs, target)
            val_point = anytime_point(tensors["val"]["playback_scores"].transpose(0, 1), tensors["val"]["scores"],
                                      tensors["val"]["labels"], label_space, confidence["val"], costs, threshold)
            point = anytime_point(playback_logits, test["scores"], test["labels"], label_space, confidence["test"],
                                  costs, threshold)
            calibrated.append({"policy": policy, "target": target, "threshold": threshold,
                               "val_cost_fraction": val_point.cost_fraction, "cost_fraction": point.cost_fraction,
                               "gmacs": point.mean_cost / 1e9, primary: point.metrics[primary],
                               f"{primary}_minus_full": point.metrics[primary] - full.metrics[primary],
                               "exit_fractions": point.exit_fractions})
        result["policies"][policy] = {
            "calibrated": calibrated,
            "curve": [{"threshold": p.threshold, "gmacs": p.mean_cost / 1e9, "cost_fraction": p.cost_fraction,
                       primary: p.metrics[primary], "exit_fractions": p.exit_fractions} for p in curve]}
    return result


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, figures in result["policies"].items():
        curve = sorted(figures["curve"], key=lambda p: p["gmacs"])
        ax.plot([p["gmacs"] for p in curve], [p[metric] for p in curve], label=f"anytime, {policy}")
        ax.scatter([p["gmacs"] for p in figures["calibrated"]], [p[metric] for p in figures["calibrated"]], s=18,
                   marker="o", label=f"{policy}: threshold from val")
    ax.scatter([result["full"]["gmacs"]], [result["full"][metric]], marker="*", s=120, color="k",
               label="every playback")
    ax.scatter([p["gmacs"] for p in result["fixed_exits"]], [p[metric] for p in result["fixed_exits"]], marker="x",
               color="gray", label="every clip stops at playback p")
    ax.set_xlabel("mean GMACs per clip")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config_file = args.run / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{config_file} does not exist: --run must be the OUTPUT_DIR of a training run (it holds "
                          "config.yaml and checkpoints/)")
    cfg = load_config(config_file, args.opts)
    out = args.out or args.run / "anytime"
    out.mkdir(parents=True, exist_ok=True)
    result = anytime_study(cfg, args.run, out, args.targets, args.policies)
    (out / "anytime.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "anytime.png")
    for figures in result["policies"].values():
        for point in figures["calibrated"]:
            print(json.dumps({k: v for k, v in point.items() if k != "exit_fractions"}
                             | {"exit_fractions": [round(f, 3) for f in point["exit_fractions"]]}))
    print(json.dumps({"full": result["full"], "fixed_exits": result["fixed_exits"], "out": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_on_user_error(main))

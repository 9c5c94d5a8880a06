#!/usr/bin/env python
"""Parameters and FLOPs of the model of any config, per top-level module and per stage.

The input is built like the dataset builds it: S = MODEL.PLAYBACK + 1 playbacks, playback i shaped
[batch, T0 * (i + 1), F] (T0 = AUDIO_DATA.FRAMES0, F = AUDIO_DATA.NUM_FREQUENCIES). FLOPs come from fvcore's
FlopCountAnalysis on the eval-mode model, with fvcore's convention that **one multiply-add counts as one flop** (so
the figures are MACs, as in the MViTv2 and PlayItBack papers). fvcore has no rule for
``aten::scaled_dot_product_attention``, which every attention here uses, so one is added (the two matrix products
``Q K^T`` and ``A V``). Operators without a rule (element-wise ops, softmax, pooling, ...) are listed with their call
counts, not counted.

Stages: "encoder_pass" is one pass of the encoder's features (patch embedding, blocks, final norm) on
[batch, 1, T0, F], and "encoder_passes" the S passes PlayItBack runs (the running composite always has T0 frames);
"encoder_head" all calls of the encoder's classifier head (PlayItBack: on the saliency-pooled positive and negative
tokens of every playback); "saliency_i" saliency module i; "decoder" the TemPr decoder; "other" the rest (the ops in
the model's own forward: saliency pooling, replay). The stages after "encoder_pass" sum to "total".

Examples:
    python tools/model_info.py --cfg configs/VGG-Sound/PlayItBackX3.yaml
    python tools/model_info.py --cfg configs/Demo/PlayItBackX2.yaml ENCODER.DEPTH 2 --json
    python tools/model_info.py --cfg configs/VGG-Sound/MViTv2_B.yaml --batch 2
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import torch
from fvcore.common.config import CfgNode
from torch import nn

from playitback.config import ConfigError, load_config
from playitback.models import build_model
from playitback.models.build import example_playbacks
from playitback.models.cost import stage_flops


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """Total and trainable parameter counts of the model ("total" row) and of each top-level module."""
    def counts(module: nn.Module) -> dict[str, int]:
        params = list(module.parameters())
        return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}

    return {"total": counts(model), **{name: counts(child) for name, child in model.named_children()}}


def model_info(cfg: CfgNode, batch: int = 1) -> dict[str, Any]:
    """Parameters and FLOPs of the config's model on the CPU, eval mode, for one batch of `batch` clips.

    Returns:
        {"model", "input_shapes", "params": {module: {"total", "trainable"}}, "flops": {stage: FLOPs},
        "flops_by_module": {top-level module: FLOPs}, "unsupported_ops": {operator: calls}}. FLOPs are
        multiply-adds for the whole batch.
    """
    model = build_model(cfg).eval()
    playbacks = example_playbacks(cfg, batch, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stages, whole = stage_flops(model, playbacks)
    top_level = [name for name, _ in model.named_children()]
    by_module = {name: whole.by_module.get(name, 0) for name in top_level}
    by_module["own_forward"] = whole.total - sum(by_module.values())
    return {
        "model": cfg.MODEL.MODEL_NAME,
        "input_shapes": [list(p.shape) for p in playbacks],
        "params": parameter_counts(model),
        "flops": stages,
        "flops_by_module": by_module,
        "unsupported_ops": dict(sorted(whole.unsupported.items(), key=lambda kv: -kv[1])),
    }


def format_info(info: dict[str, Any]) -> str:
    """The report of :func:`model_info` as plain-text tables (parameters in millions, GFLOPs = 1e9 multiply-adds)."""
    lines = [f"model {info['model']}, input {' '.join('x'.join(map(str, s)) for s in info['input_shapes'])}", "",
             f"{'module':<20} {'params (M)':>12} {'trainable (M)':>14} {'GFLOPs':>10}"]
    for name, counts in info["params"].items():
        flops = info["flops"]["total"] if name == "total" else info["flops_by_module"].get(name, 0)
        lines.append(f"{name:<20} {counts['total'] / 1e6:>12.3f} {counts['trainable'] / 1e6:>14.3f} "
                     f"{flops / 1e9:>10.3f}")
    lines += ["", f"{'stage':<20} {'GFLOPs':>10}"]
    lines += [f"{name:<20} {value / 1e9:>10.3f}" for name, value in info["flops"].items()]
    ops = ", ".join(f"{op.removeprefix('aten::')} x{n}" for op, n in info["unsupported_ops"].items())
    lines += ["", f"not counted (no fvcore rule): {ops or 'none'}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the tables (or the JSON with --json); exit status 2 for an unusable config."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="config file (e.g. configs/VGG-Sound/PlayItBackX3.yaml)")
    parser.add_argument("--batch", type=int, default=1, help="clips per batch of the counted forward")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    try:
        cfg = load_config(args.cfg, ["NUM_GPUS", "0", *args.opts])
    except (ConfigError, FileNotFoundError) as err:
        print(f"model_info: {err}", file=sys.stderr)
        return 2
    info = model_info(cfg, args.batch)
    print(json.dumps(info) if args.json else format_info(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Export a trained PlayItBack (or encoder-only) model for deployment: torch.export (.pt2), ONNX and TorchScript.

The exported graph is the eval-mode model from the S playback spectrograms to the fused logits and probabilities
(softmax per task, sigmoid for multi-label data). The log-mel front-end is not part of it: compute the inputs with
``playitback.data.playback_pyramid`` (or any equivalent STFT/mel code), playback i shaped [B, T0 * (i + 1), F].

The model is captured once with ``torch.export`` (it has no data-dependent control flow or shapes, so the whole
forward is one graph, with a symbolic batch dimension unless ``--batch`` fixes it). That program is saved as is
(``model.pt2``, load with ``torch.export.load``) and converted to ONNX by PyTorch's torch.export-based exporter
(``model.onnx``, opset 18; needs onnxscript). TorchScript (``model.pt``, a trace) is written too for runtimes that
still read it. Every operator of the model has an ONNX equivalent, so no custom mapping is involved.

Examples:
    python tools/export.py --cfg configs/VGG-Sound/PlayItBackX2.yaml --checkpoint x2.pyth --out exported/
    python tools/export.py --cfg ... --checkpoint ... --out exported/ --format onnx --batch 1
    python tools/export.py --cfg ... --checkpoint ... --out exported/ AUDIO_DATA.FRAMES0 400
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from fvcore.common.config import CfgNode
from torch import Tensor, nn

from playitback.config import ConfigError, derived, load_config
from playitback.engine.checkpoint_files import CheckpointError
from playitback.inference import load_inference_model, probabilities
from playitback.models.build import example_playbacks
from playitback.utils.cli import split_overrides

FORMATS = ("pt2", "onnx", "torchscript")
ONNX_OPSET = 18
OUTPUT_NAMES = ("logits", "probabilities")


class ExportedModel(nn.Module):
    """Positional-input wrapper: (playback_0, ..., playback_{S-1}) -> (logits, probabilities).

    Args:
        model: PlayItBack or EncoderClassifier in eval mode.
        class_counts: classes per task (softmax per task block).
        multi_label: sigmoid instead of softmax.
    """

    def __init__(self, model: nn.Module, class_counts: Sequence[int], multi_label: bool) -> None:
        super().__init__()
        self.model = model
        self.class_counts = list(class_counts)
        self.multi_label = multi_label

    def forward(self, *playbacks: Tensor) -> tuple[Tensor, Tensor]:
        """playbacks: S tensors [B, T0 * (i + 1), F] -> logits [B, K] and probabilities [B, K]."""
        logits = self.model(list(playbacks)).logits
        return logits, probabilities(logits, self.class_counts, self.multi_label)


def example_inputs(cfg: CfgNode, batch: int = 1, seed: int = 0) -> tuple[Tensor, ...]:
    """Random log-mel-like inputs of a config's shapes: S tensors [batch, T0 * (i + 1), F]."""
    return tuple(p - 4.0 for p in example_playbacks(cfg, batch, generator=torch.Generator().manual_seed(seed)))


def capture(wrapper: ExportedModel, inputs: tuple[Tensor, ...], dynamic_batch: bool) -> torch.export.ExportedProgram:
    """``torch.export`` of the wrapper on example inputs, with a symbolic batch dimension shared by every playback
    when `dynamic_batch`."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = {"playbacks": tuple({0: batch} for _ in inputs)} if dynamic_batch else None
    with torch.no_grad():
        return torch.export.export(wrapper, inputs, dynamic_shapes=shapes)


def export_program(program: torch.export.ExportedProgram, path: Path) -> Path:
    """Save the captured program (``torch.export.load(path).module()`` runs it)."""
    torch.export.save(program, str(path))
    return path


def export_torchscript(wrapper: ExportedModel, inputs: tuple[Tensor, ...], path: Path) -> Path:
    """Trace the wrapper (the forward has no data-dependent control flow, so a trace is the whole model)."""
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, inputs, check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(program: torch.export.ExportedProgram, num_inputs: int, path: Path) -> Path:
    """ONNX (opset 18) of the captured program by PyTorch's torch.export-based exporter, checked by onnx's checker."""
    if importlib.util.find_spec("onnxscript") is None:
        raise ValueError("ONNX export needs onnxscript (and onnx): pip install -e .[export], or leave out --format onnx")
    import onnx

    names = [f"playback{i}" for i in range(num_inputs)]
    onnx_program = torch.onnx.export(program, input_names=names, output_names=list(OUTPUT_NAMES),
                                     opset_version=ONNX_OPSET, dynamo=True, verbose=False)
    onnx_program.save(str(path))
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def export(cfg: CfgNode, checkpoint: str | Path | None, out_dir: str | Path, formats: Sequence[str] = FORMATS,
           batch: int | None = None) -> dict[str, Path]:
    """Export the config's model with the checkpoint's weights.

    Args:
        cfg: The config the checkpoint was trained with.
        checkpoint: Checkpoint file (every weight must fit), or None for random weights.
        out_dir: Output folder: model.pt2 (torch.export), model.onnx, model.pt (TorchScript), and export.json
            describing the inputs.
        formats: Any of "pt2", "onnx", "torchscript".
        batch: Fixed batch size, or None for a dynamic batch dimension (traced with batch 2).

    Returns:
        Format -> written file.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; use {', '.join(FORMATS)}")
    model = load_inference_model(cfg, checkpoint, torch.device("cpu"), strict=True)
    wrapper = ExportedModel(model, derived.class_counts(cfg), cfg.DATA.MULTI_LABEL).eval()
    inputs = example_inputs(cfg, batch or 2)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "pt2" in formats or "onnx" in formats:
        program = capture(wrapper, inputs, dynamic_batch=batch is None)
        if "pt2" in formats:
            written["pt2"] = export_program(program, out_dir / "model.pt2")
        if "onnx" in formats:
            written["onnx"] = export_onnx(program, len(inputs), out_dir / "model.onnx")
    if "torchscript" in formats:
        written["torchscript"] = export_torchscript(wrapper, inputs, out_dir / "model.pt")
    description = {
        "inputs": [{"name": f"playback{i}", "shape": ["batch" if batch is None else batch, x.shape[1], x.shape[2]]}
                   for i, x in enumerate(inputs)],
        "outputs": list(OUTPUT_NAMES),
        "class_counts": derived.class_counts(cfg),
        "multi_label": bool(cfg.DATA.MULTI_LABEL),
        "sample_rate": cfg.AUDIO_DATA.SAMPLING_RATE,
        "clip_secs": cfg.AUDIO_DATA.CLIP_SECS,
        "window_ms": cfg.AUDIO_DATA.WINDOW_LENGTH,
        "window_scaling": cfg.AUDIO_DATA.WINDOW_SCALING,
        "feature_style": cfg.AUDIO_DATA.FEATURE_STYLE,
        "n_fft": cfg.AUDIO_DATA.N_FFT,
        "files": {name: file.name for name, file in written.items()},
    }
    (out_dir / "export.json").write_text(json.dumps(description, indent=1))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="KEY VALUE config overrides go last, after the flags.")
    parser.add_argument("--cfg", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--batch", type=int, default=None, help="fixed batch size (default: dynamic)")
    flags, opts = split_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(flags)
    try:
        cfg = load_config(args.cfg, opts + ["NUM_GPUS", "0", "NUM_SHARDS", "1"])
        written = export(cfg, args.checkpoint, args.out, args.format, args.batch)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Export a trained PlayItBack (or encoder-only) model to TorchScript and/or ONNX for deployment.

The exported graph is the eval-mode model from the S playback spectrograms to the fused logits and probabilities
(softmax per task, sigmoid for multi-label data). The log-mel front-end is not part of it: compute the inputs with
``playitback.data.playback_pyramid`` (or any equivalent STFT/mel code), playback i shaped [B, T0 * (i + 1), F].

ONNX has no searchsorted operator, which the replay step uses to find, for each output frame, the composite frame
whose piece of the spliced timeline it reads. The exporter here maps ``aten::searchsorted`` to its exact equivalent
for the small sorted rows involved: the count of row entries below (or, with right=True, at or below) each value,
``ReduceSum(Cast(LessOrEqual(sorted[..., None, :], values[..., None])))``. Two losses of the TorchScript-based
exporter are repaired as well: ``chunk`` is split by the size read at run time (with a dynamic batch the exporter no
longer knows it), and float64 constants and casts it introduces are made float32 (:func:`float64_to_float32`). The
model code is left unchanged.

Examples:
    python tools/export.py --cfg configs/VGG-Sound/PlayItBackX2.yaml --checkpoint x2.pyth --out exported/
    python tools/export.py --cfg ... --checkpoint ... --out exported/ --format onnx --batch 1
    python tools/export.py --cfg ... --checkpoint ... --out exported/ --opts AUDIO_DATA.FRAMES0 400
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import torch
from fvcore.common.config import CfgNode
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playitback.config import ConfigError, derived, load_config  # noqa: E402
from playitback.engine.checkpoint import CheckpointError  # noqa: E402
from playitback.inference import load_inference_model, probabilities  # noqa: E402

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
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
        logits = self.model(list(playbacks))["logits"]
        return logits, probabilities(logits, self.class_counts, self.multi_label)


def example_inputs(cfg: CfgNode, batch: int = 1, seed: int = 0) -> tuple[Tensor, ...]:
    """Random log-mel-like inputs of a config's shapes: S tensors [batch, T0 * (i + 1), F]."""
    generator = torch.Generator().manual_seed(seed)
    frames0, bins = cfg.AUDIO_DATA.FRAMES0, cfg.AUDIO_DATA.NUM_FREQUENCIES
    return tuple(torch.randn(batch, frames0 * (i + 1), bins, generator=generator) - 4.0
                 for i in range(derived.num_playbacks(cfg)))


def _searchsorted_symbolic(g, sorted_sequence, values, out_int32, right, side, sorter):  # noqa: ANN001, ANN202
    # count(sorted < v) is searchsorted(side="left"), count(sorted <= v) is side="right", for rows sorted ascending.
    from torch.onnx import symbolic_helper

    side_name = symbolic_helper._maybe_get_const(side, "s")
    is_right = bool(symbolic_helper._maybe_get_const(right, "b")) or side_name == "right"
    minus_one = g.op("Constant", value_t=torch.tensor([-1], dtype=torch.long))
    minus_two = g.op("Constant", value_t=torch.tensor([-2], dtype=torch.long))
    rows = g.op("Unsqueeze", sorted_sequence, minus_two)  # [..., 1, T]
    cols = g.op("Unsqueeze", values, minus_one)  # [..., V, 1]
    hit = g.op("LessOrEqual" if is_right else "Less", rows, cols)  # [..., V, T]
    count = g.op("ReduceSum", g.op("Cast", hit, to_i=7), minus_one, keepdims_i=0)  # int64 [..., V]
    return g.op("Cast", count, to_i=6) if symbolic_helper._maybe_get_const(out_int32, "b") else count


def _chunk_symbolic(g, tensor, chunks, dim, _outputs=None):  # noqa: ANN001, ANN202
    # The stock symbolic needs the chunked dimension's size at export time, which the tracer loses after the einsum
    # of the decoder once the batch is dynamic; the size is read from the tensor's shape at run time instead.
    from torch.onnx import symbolic_helper

    chunks = symbolic_helper._get_const(chunks, "i", "chunks")
    dim = symbolic_helper._get_const(dim, "i", "dim")
    size = g.op("Gather", g.op("Shape", tensor), g.op("Constant", value_t=torch.tensor([dim], dtype=torch.long)),
                axis_i=0)
    part = g.op("Div", size, g.op("Constant", value_t=torch.tensor([chunks], dtype=torch.long)))
    return g.op("Split", tensor, g.op("Concat", *([part] * chunks), axis_i=0), axis_i=dim, outputs=_outputs or chunks)


def float64_to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn the float64 constants and casts of an exported graph into float32 (in place).

    The TorchScript exporter loses the dtype of Resize outputs (F.interpolate in the saliency), so Python float
    constants next to them (``1.0 - grid`` in the position embedding) are typed float64 and the float32 activations
    are cast up to meet them; onnxruntime then rejects the graph (a LayerNormalization sees float64 and float32). The
    PyTorch model computes in float32 throughout, so float32 is the type every one of them was meant to have.
    """
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == onnx.TensorProto.DOUBLE:
                attribute.i = onnx.TensorProto.FLOAT
            elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == onnx.TensorProto.DOUBLE:
                value = onnx.numpy_helper.to_array(attribute.t).astype(np.float32)
                attribute.t.CopyFrom(onnx.numpy_helper.from_array(value, attribute.t.name))
    return model


def export_torchscript(wrapper: ExportedModel, inputs: tuple[Tensor, ...], path: Path) -> Path:
    """Trace the wrapper (the forward has no data-dependent control flow, so a trace is the whole model)."""
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, inputs, check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(wrapper: ExportedModel, inputs: tuple[Tensor, ...], path: Path, dynamic_batch: bool) -> Path:
    """ONNX (opset 17, TorchScript-based exporter) with searchsorted mapped as the module docstring explains."""
    torch.onnx.register_custom_op_symbolic("aten::searchsorted", _searchsorted_symbolic, ONNX_OPSET)
    torch.onnx.register_custom_op_symbolic("aten::unsafe_chunk", _chunk_symbolic, ONNX_OPSET)
    names = [f"playback{i}" for i in range(len(inputs))]
    axes = {name: {0: "batch"} for name in (*names, *OUTPUT_NAMES)} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(wrapper, inputs, str(path), input_names=names, output_names=list(OUTPUT_NAMES),
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
    model = float64_to_float32(onnx.load(str(path)))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def export(cfg: CfgNode, checkpoint: str | Path | None, out_dir: str | Path, formats: Sequence[str] = FORMATS,
           batch: int | None = None) -> dict[str, Path]:
    """Export the config's model with the checkpoint's weights.

    Args:
        cfg: The config the checkpoint was trained with.
        checkpoint: Checkpoint file (every weight must fit), or None for random weights.
        out_dir: Output folder: model.pt (TorchScript), model.onnx, and export.json describing the inputs.
        formats: Any of "torchscript", "onnx".
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
    if "torchscript" in formats:
        written["torchscript"] = export_torchscript(wrapper, inputs, out_dir / "model.pt")
    if "onnx" in formats:
        written["onnx"] = export_onnx(wrapper, inputs, out_dir / "model.onnx", dynamic_batch=batch is None)
    description = {
        "inputs": [{"name": f"playback{i}", "shape": ["batch" if batch is None else batch, x.shape[1], x.shape[2]]}
                   for i, x in enumerate(inputs)],
        "outputs": list(OUTPUT_NAMES),
        "class_counts": derived.class_counts(cfg),
        "multi_label": bool(cfg.DATA.MULTI_LABEL),
        "sample_rate": cfg.AUDIO_DATA.SAMPLING_RATE,
        "clip_secs": cfg.AUDIO_DATA.CLIP_SECS,
        "window_ms": cfg.AUDIO_DATA.WINDOW_LENGTH,
        "n_fft": cfg.AUDIO_DATA.N_FFT,
        "files": {name: file.name for name, file in written.items()},
    }
    (out_dir / "export.json").write_text(json.dumps(description, indent=1))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--batch", type=int, default=None, help="fixed batch size (default: dynamic)")
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.cfg, list(args.opts) + ["NUM_GPUS", "0", "NUM_SHARDS", "1"])
        written = export(cfg, args.checkpoint, args.out, args.format, args.batch)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""FLOP counting (fvcore) and model FLOP utilisation (MFU).

Two conventions meet here, so every name says which it uses:

* ``*_macs``: multiply-adds, fvcore's unit and the one the MViTv2 and PlayItBack papers call "FLOPs";
* ``*_flops``: floating-point operations, 2 per multiply-add, the unit of a device's peak FLOP/s and of MFU.

MFU = (FLOPs the model needs for a step) / (step time) / (the device's peak FLOP/s for the dtype). The FLOPs of a
training step follow the usual estimate: the backward of a module costs twice its forward (gradients of the inputs
and of the weights), and a module without trainable parameters in its subtree is assumed to pass no gradient (true
for PlayItBack's frozen encoder, whose inputs are spectrograms). Only matrix products and convolutions are counted
(what fvcore has rules for), which is what MFU conventionally measures: element-wise work is overhead.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

# Dense (no structured sparsity) peak TFLOP/s from the vendors' data sheets, per autocast dtype; "fp32" is the plain
# float32 rate (torch does not use TF32 for matmuls unless asked). Matched in order against the device name.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"H[12]00.*NVL", {"bf16": 835.5, "fp16": 835.5, "fp32": 60.0}),
    (r"H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    (r"H100.*PCIe", {"bf16": 756.5, "fp16": 756.5, "fp32": 51.2}),
    (r"H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    (r"A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    (r"L40S", {"bf16": 362.05, "fp16": 362.05, "fp32": 91.6}),
    (r"\bL4\b", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    (r"\bA10\b", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    (r"V100", {"fp16": 125.0, "fp32": 15.7}),
)


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore rule for ``aten::scaled_dot_product_attention``: multiply-adds of ``Q K^T`` and of ``A V``.

    With query [..., L, E], key [..., M, E] and value [..., M, Ev] (leading dims broadcast), that is
    ``prod(...) * L * M * (E + Ev)``. The softmax and scaling are element-wise and, as everywhere in fvcore, not
    counted.
    """
    query, key, value = (get_shape(v) for v in inputs[:3])
    batch = math.prod(torch.broadcast_shapes(tuple(query[:-2]), tuple(key[:-2])))
    return batch * query[-2] * key[-2] * (query[-1] + value[-1])


@dataclass(frozen=True)
class FlopReport:
    """Multiply-adds of one module call.

    Attributes:
        total: All counted multiply-adds.
        by_module: Multiply-adds per submodule name ("" is the module itself; all calls of a submodule summed).
        unsupported: Call counts of operators fvcore has no rule for (not counted in `total`).
    """

    total: int
    by_module: dict[str, int]
    unsupported: dict[str, int]


class _TensorFieldsOutput(nn.Module):
    """Returns the tensor fields of a dataclass output (ModelOutput) as a dict: the JIT tracer under fvcore takes
    tensors, tuples, lists and dicts only."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: Any) -> Any:
        out = self.module(*inputs)
        if dataclasses.is_dataclass(out):
            return {f.name: v for f in dataclasses.fields(out) if isinstance(v := getattr(out, f.name), torch.Tensor)}
        return out


def count_flops(module: nn.Module, inputs: tuple[Any, ...]) -> FlopReport:
    """Count the multiply-adds of ``module(*inputs)`` with fvcore (eval mode and no autograd are the caller's choice).

    Args:
        module: Any module whose forward fvcore can trace (tensor, list-of-tensor or dict inputs; tensor, tuple,
            list, dict or dataclass outputs).
        inputs: The positional arguments of the forward.

    Returns:
        The :class:`FlopReport`.
    """
    analysis = (FlopCountAnalysis(_TensorFieldsOutput(module), inputs)
                .set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
                .unsupported_ops_warnings(False)
                .uncalled_modules_warnings(False)
                .tracer_warnings("none"))
    return FlopReport(
        total=int(analysis.total()),
        # Named as in `module` itself, not in the wrapper ("module.encoder" -> "encoder").
        by_module={name.removeprefix("module").removeprefix("."): int(value)
                   for name, value in analysis.by_module().items() if name},
        unsupported=dict(analysis.unsupported_ops()),
    )


@dataclass(frozen=True)
class StepFlops:
    """FLOPs (2 per multiply-add) of one forward and of one training step (forward + backward) of a batch."""

    forward: int
    train_step: int


def step_flops(model: nn.Module, report: FlopReport) -> StepFlops:
    """Forward and training-step FLOPs of `model` from the :class:`FlopReport` of its forward.

    Each module's own multiply-adds (its total minus its direct children's) count once in the forward and twice more
    in the backward when the module or a submodule has a trainable parameter; otherwise no backward is counted.

    Args:
        model: The module the report was made of (its ``requires_grad`` flags decide what trains).
        report: :func:`count_flops` of one forward of `model`.
    """
    modules = dict(model.named_modules())
    backward_macs = 0
    for name, module in modules.items():
        if name not in report.by_module or not any(p.requires_grad for p in module.parameters()):
            continue
        prefix = f"{name}." if name else ""
        children = [f"{prefix}{child}" for child, _ in module.named_children()]
        own = report.by_module[name] - sum(report.by_module.get(child, 0) for child in children)
        backward_macs += 2 * own
    return StepFlops(forward=2 * report.total, train_step=2 * (report.total + backward_macs))


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """The data-sheet dense peak TFLOP/s of a device for an autocast dtype ("bf16", "fp16", "fp32"), or None when the
    device (or the dtype on it) is not in :data:`PEAK_TFLOPS`."""
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peaks.get(dtype)
    return None


def model_flops_utilisation(flops: float, seconds: float, peak: float) -> float:
    """MFU: `flops` done in `seconds` as a fraction of `peak` TFLOP/s."""
    if seconds <= 0 or peak <= 0:
        raise ValueError(f"MFU needs a positive time and peak; got {seconds} s and {peak} TFLOP/s")
    return flops / seconds / (peak * 1e12)

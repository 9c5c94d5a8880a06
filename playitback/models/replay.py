"""Replay: splice the salient runs of the running composite with a finer playback.

Playback i+1 renders the same crop as playback 0 at a hop ``ratio`` times smaller, so composite frame t (playback-0
time coordinates) covers exactly the frames ``[t * ratio, (t + 1) * ratio)`` of the finer playback. A salient run
``[s, e)`` is therefore replaced by ``finer[s * ratio : e * ratio]`` and the non-salient frames are kept; the
resulting timeline is resized back to T0 frames with nearest sampling (the original's resize).

Everything is index arithmetic on fixed-size tensors: no Python loop over the batch, no ``.item()``, ``.nonzero()`` or
``.tolist()``, and no shape that depends on the mask, so both functions run under ``torch.compile(fullgraph=True)``
and never synchronise the device.

Shape legend: B batch, T0 frames of playback 0 (and of the composite), F mel bins, R = T // 2 + 1 run slots.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["replay", "salient_runs"]


def _check_replay_inputs(composite: Tensor, finer: Tensor, mask: Tensor, ratio: int) -> None:
    """Raise a clear error for inputs that `replay` cannot splice (shape-only checks, safe under compile)."""
    if not isinstance(ratio, int) or ratio < 1:
        raise ValueError(f"replay: ratio must be a positive int (finer frames per composite frame), got {ratio!r}")
    if composite.dim() != 3:
        raise ValueError(f"replay: composite must be [B, T0, F], got shape {tuple(composite.shape)}")
    batch, frames, bins = composite.shape
    if tuple(finer.shape) != (batch, frames * ratio, bins):
        raise ValueError(
            f"replay: finer must be [B, T0*ratio, F] = {(batch, frames * ratio, bins)} for composite "
            f"{tuple(composite.shape)} and ratio {ratio}, got {tuple(finer.shape)}; pass the playback rendered at "
            "ratio times the frames of playback 0"
        )
    if tuple(mask.shape) != (batch, frames):
        raise ValueError(f"replay: mask must be [B, T0] = {(batch, frames)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"replay: mask must be a bool tensor, got {mask.dtype}; threshold the saliency first")
    if finer.dtype != composite.dtype or finer.device != composite.device or mask.device != composite.device:
        raise ValueError(
            f"replay: finer ({finer.dtype}, {finer.device}) and mask ({mask.device}) must match composite "
            f"({composite.dtype}, {composite.device})"
        )


def replay(composite: Tensor, finer: Tensor, mask: Tensor, ratio: int) -> Tensor:
    """Replace the salient runs of the composite by the same time span of a finer playback, resized back to T0.

    The concatenated timeline of sample b has length ``L_b = T0 + (ratio - 1) * mask[b].sum()``; output frame u reads
    timeline position ``floor(u * L_b / T0)`` (exact integer arithmetic). An all-False mask returns the composite
    unchanged; an all-True mask returns ``finer[:, ::ratio]``.

    Args:
        composite: running composite in playback-0 time coordinates, [B, T0, F].
        finer: the finer playback over the same crop, [B, T0 * ratio, F].
        mask: salient frames of the composite, bool [B, T0].
        ratio: finer frames per composite frame (playback i has ``ratio = i + 1`` relative to playback 0).

    Returns:
        The new composite, [B, T0, F], differentiable with respect to ``composite`` and ``finer``.

    Raises:
        ValueError: for mismatched shapes, dtypes or devices, or a ratio that is not a positive int.
        TypeError: if ``mask`` is not bool.
    """
    _check_replay_inputs(composite, finer, mask, ratio)
    frames = composite.shape[1]
    # Each composite frame becomes a piece of the timeline: `ratio` finer frames if salient, itself otherwise. A run
    # [s, e) is the concatenation of its frames' pieces, so per-frame pieces give the run-wise splice exactly.
    piece = 1 + (ratio - 1) * mask.long()  # [B, T0]
    piece_end = piece.cumsum(dim=1)  # [B, T0], exclusive end of each piece on the timeline
    total = piece_end[:, -1:]  # [B, 1], L_b
    out_frame = torch.arange(frames, device=composite.device)
    position = out_frame * total // frames  # [B, T0], timeline position read by each output frame
    # The composite frame owning each position is the number of pieces that end at or before it (a searchsorted):
    # a histogram of the piece ends over the timeline, cumulated and read at the position. Linear in the timeline
    # length, exact, and made of operators that every exporter (TorchScript, torch.export, ONNX) has.
    ends = torch.zeros(composite.shape[0], frames * ratio + 1, dtype=piece_end.dtype, device=piece_end.device)
    ends.scatter_add_(1, piece_end, torch.ones_like(piece_end))  # [B, T0 * ratio + 1], pieces ending at each position
    frame = ends.cumsum(dim=1).gather(1, position)  # [B, T0]
    offset = position - piece_end.gather(1, frame) + piece.gather(1, frame)  # [B, T0], position inside the piece
    # One stacked source [composite | finer] turns the two cases into a single row lookup.
    source = torch.cat([composite, finer], dim=1)  # [B, T0 * (1 + ratio), F]
    index = torch.where(mask.gather(1, frame), frames + frame * ratio + offset, frame)  # [B, T0]
    # Whole mel rows are copied, so index_select on the flattened rows is used: measured ~7x faster than a gather with
    # an expanded index on CPU.
    batch, length, bins = source.shape
    row = index + length * torch.arange(batch, device=index.device).unsqueeze(1)  # [B, T0]
    return source.reshape(batch * length, bins).index_select(0, row.flatten()).reshape(batch, frames, bins)


def _compact(edges: Tensor, slots: int) -> Tensor:
    """Positions of the True entries of each row, left-aligned into ``slots`` columns, zero-filled.

    Args:
        edges: bool [B, P].
        slots: output width; must be at least the largest number of True entries in a row.

    Returns:
        int64 [B, slots].
    """
    batch, length = edges.shape
    # The k-th True entry goes to column k; the others are sent to a spare column (with value 0) that is dropped.
    column = torch.where(edges, edges.long().cumsum(dim=1) - 1, slots)  # [B, P]
    position = torch.arange(length, device=edges.device).expand(batch, length)
    out = torch.zeros(batch, slots + 1, dtype=torch.long, device=edges.device)
    out.scatter_add_(1, column, torch.where(edges, position, 0))
    return out[:, :slots]


def salient_runs(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Contiguous runs of True in each row of a mask, as fixed-size start/end tables.

    Args:
        mask: bool [B, T].

    Returns:
        ``(starts, ends, valid)``: int64 [B, R] run starts, int64 [B, R] exclusive run ends and bool [B, R] marking the
        slots that hold a run, with R = T // 2 + 1 (more than the most runs a length-T mask can hold). Runs are in
        time order and left-aligned; invalid slots are zero.

    Raises:
        ValueError: if ``mask`` is not 2-D.
        TypeError: if ``mask`` is not bool.
    """
    if mask.dim() != 2:
        raise ValueError(f"salient_runs: mask must be [B, T], got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"salient_runs: mask must be a bool tensor, got {mask.dtype}")
    slots = mask.shape[1] // 2 + 1
    # Zero padding on both sides makes every run begin with a +1 step and end with a -1 step, even at the clip ends.
    step = F.pad(mask.long(), (1, 1)).diff(dim=1)  # [B, T + 1]; index j is the step between frames j - 1 and j
    rises = step == 1
    starts = _compact(rises, slots)
    ends = _compact(step == -1, slots)
    valid = torch.arange(slots, device=mask.device) < rises.sum(dim=1, keepdim=True)
    return starts, ends, valid

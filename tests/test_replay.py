"""Vectorised replay and run detection against slow per-sample references."""
from __future__ import annotations

import pytest
import torch

from playitback.models.replay import replay, salient_runs


def reference_runs(row: list[bool]) -> list[tuple[int, int]]:
    """Contiguous runs [start, end) of True, found by walking the row frame by frame."""
    runs = []
    start = None
    for t, on in enumerate(row):
        if on and start is None:
            start = t
        if not on and start is not None:
            runs.append((start, t))
            start = None
    if start is not None:
        runs.append((start, len(row)))
    return runs


def reference_replay(composite: torch.Tensor, finer: torch.Tensor, mask: torch.Tensor, ratio: int) -> torch.Tensor:
    """Per-sample splice: kept stretches of the composite and finer runs, concatenated, then nearest-resized."""
    frames = composite.shape[1]
    outputs = []
    for b in range(composite.shape[0]):
        pieces = []
        cursor = 0
        for start, end in reference_runs(mask[b].tolist()):
            pieces.append(composite[b, cursor:start])
            pieces.append(finer[b, start * ratio : end * ratio])
            cursor = end
        pieces.append(composite[b, cursor:])
        timeline = torch.cat(pieces)
        length = timeline.shape[0]
        assert length == frames + (ratio - 1) * int(mask[b].sum())
        outputs.append(timeline[[u * length // frames for u in range(frames)]])
    return torch.stack(outputs)


def special_masks(batch: int, frames: int) -> torch.Tensor:
    """All-False, all-True, single-frame runs, runs touching both ends, then random densities."""
    masks = [
        torch.zeros(frames, dtype=torch.bool),
        torch.ones(frames, dtype=torch.bool),
        torch.arange(frames) % 2 == 0,
        torch.arange(frames) % 2 == 1,
        (torch.arange(frames) < 2) | (torch.arange(frames) >= frames - 3),
        torch.arange(frames) == frames - 1,
        torch.arange(frames) == 0,
    ]
    generator = torch.Generator().manual_seed(frames)
    while len(masks) < batch:
        density = torch.rand((), generator=generator)
        masks.append(torch.rand(frames, generator=generator) < density)
    return torch.stack(masks[:batch])


@pytest.mark.parametrize("frames", [1, 2, 7, 16, 40])
def test_salient_runs_matches_run_length_reference(frames: int) -> None:
    mask = special_masks(24, frames)
    starts, ends, valid = salient_runs(mask)
    slots = frames // 2 + 1
    assert starts.shape == ends.shape == valid.shape == (24, slots)
    for b in range(24):
        runs = reference_runs(mask[b].tolist())
        count = len(runs)
        assert valid[b].tolist() == [True] * count + [False] * (slots - count)
        assert list(zip(starts[b, :count].tolist(), ends[b, :count].tolist())) == runs
        assert not starts[b, count:].any() and not ends[b, count:].any()


@pytest.mark.parametrize("ratio", [1, 2, 3, 4])
@pytest.mark.parametrize("batch,frames", [(1, 1), (3, 5), (9, 12), (16, 33), (12, 100)])
def test_replay_equals_per_sample_reference(ratio: int, batch: int, frames: int) -> None:
    generator = torch.Generator().manual_seed(1000 * ratio + frames)
    bins = 6
    composite = torch.randn(batch, frames, bins, generator=generator)
    finer = torch.randn(batch, frames * ratio, bins, generator=generator)
    mask = special_masks(batch, frames)
    assert torch.equal(replay(composite, finer, mask, ratio), reference_replay(composite, finer, mask, ratio))


def test_replay_fallback_cases_by_hand() -> None:
    composite = torch.arange(4.0).reshape(1, 4, 1)
    finer = 10 + torch.arange(8.0).reshape(1, 8, 1)
    # Empty mask keeps the composite; a full mask reads every ratio-th finer frame.
    assert torch.equal(replay(composite, finer, torch.zeros(1, 4, dtype=torch.bool), 2), composite)
    assert torch.equal(replay(composite, finer, torch.ones(1, 4, dtype=torch.bool), 2), finer[:, ::2])
    # Frame 1 salient: timeline [0, 12, 13, 2, 3] (L = 5); u reads floor(u * 5 / 4) = 0, 1, 2, 3.
    mask = torch.tensor([[False, True, False, False]])
    assert replay(composite, finer, mask, 2).flatten().tolist() == [0.0, 12.0, 13.0, 2.0]


def test_replay_passes_gradients_to_both_sources() -> None:
    composite = torch.randn(2, 6, 3, requires_grad=True)
    finer = torch.randn(2, 12, 3, requires_grad=True)
    mask = torch.tensor([[False, True, True, False, False, False], [True] * 6])
    replay(composite, finer, mask, 2).sum().backward()
    assert composite.grad[0].abs().sum() > 0 and finer.grad[0].abs().sum() > 0
    assert composite.grad[1].abs().sum() == 0  # a full mask reads only the finer playback


def test_replay_rejects_bad_inputs_with_clear_messages() -> None:
    composite = torch.zeros(2, 4, 3)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="T0\\*ratio"):
        replay(composite, torch.zeros(2, 7, 3), mask, 2)
    with pytest.raises(TypeError, match="bool"):
        replay(composite, torch.zeros(2, 8, 3), mask.float(), 2)
    with pytest.raises(ValueError, match="positive int"):
        replay(composite, torch.zeros(2, 8, 3), mask, 0)
    with pytest.raises(TypeError, match="bool"):
        salient_runs(mask.long())


def _compile_or_skip(fn):
    """Full-graph compile with the aot_eager backend, or skip when dynamo cannot run here.

    aot_eager does the same graph capture as inductor (a graph break or data-dependent shape fails fullgraph) without
    needing a C++ toolchain and tens of seconds of code generation.
    """
    dynamo = pytest.importorskip("torch._dynamo")
    if not dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this Python/platform")
    dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=False)


def test_replay_and_runs_compile_fullgraph() -> None:
    generator = torch.Generator().manual_seed(0)
    composite = torch.randn(4, 10, 3, generator=generator)
    finer = torch.randn(4, 30, 3, generator=generator)
    mask = special_masks(4, 10)
    compiled_replay = _compile_or_skip(replay)
    assert torch.equal(compiled_replay(composite, finer, mask, 3), replay(composite, finer, mask, 3))
    compiled_runs = _compile_or_skip(salient_runs)
    for got, want in zip(compiled_runs(mask), salient_runs(mask)):
        assert torch.equal(got, want)

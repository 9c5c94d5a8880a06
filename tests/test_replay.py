"""Vectorised replay and run detection against slow per-sample references."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import torch

from playitback.models.replay import (
    coarse_playback,
    frame_centres,
    mask_from_frame_times,
    random_span_mask,
    replay,
    salient_runs,
    stretch_bounds,
)

REPO = Path(__file__).resolve().parents[1]


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


def reference_replay(composite: torch.Tensor, times: torch.Tensor, finer: torch.Tensor, hop: int,
                     mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample splice written from the definition, in exact rational arithmetic: each salient run is replaced by
    the finer frames centred inside the time the run shows (from the midpoint with the frame before it to the
    midpoint with the frame after it; open at the clip ends), the rest of the composite is kept, then the timeline is
    nearest-resized to T0 frames."""
    frames = composite.shape[1]
    finer_centres = [Fraction(k * hop) for k in range(finer.shape[1])]
    outputs, output_times = [], []
    for b in range(composite.shape[0]):
        centre = [Fraction(int(t)) for t in times[b]]
        rows, row_times = [], []
        cursor = 0
        for start, end in reference_runs(mask[b].tolist()):
            rows += [composite[b, u] for u in range(cursor, start)]
            row_times += [int(times[b, u]) for u in range(cursor, start)]
            low = (centre[start - 1] + centre[start]) / 2 if start > 0 else None
            high = (centre[end - 1] + centre[end]) / 2 if end < frames else None
            shown = [k for k, c in enumerate(finer_centres)
                     if (low is None or c >= low) and (high is None or c < high)]
            rows += [finer[b, k] for k in shown]
            row_times += [k * hop for k in shown]
            cursor = end
        rows += [composite[b, u] for u in range(cursor, frames)]
        row_times += [int(times[b, u]) for u in range(cursor, frames)]
        length = len(rows)
        picks = [u * length // frames for u in range(frames)]
        outputs.append(torch.stack([rows[p] for p in picks]))
        output_times.append(torch.tensor([row_times[p] for p in picks]))
    return torch.stack(outputs), torch.stack(output_times)


def time_coded(batch: int, frames: int, hop: int, hop0: int, bins: int = 3) -> torch.Tensor:
    """A playback whose every value is its frame's centre in playback-0 frames (frame k: k * hop / hop0)."""
    return (torch.arange(frames, dtype=torch.float64) * hop / hop0)[None, :, None].expand(batch, frames, bins).clone()


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


@pytest.mark.parametrize("hops", [(2, 1), (6, 3, 2), (12, 6, 4, 3), (200, 100, 67, 50), (400, 200, 133, 100),
                                  (80, 40, 27, 20)])
@pytest.mark.parametrize("batch,frames", [(1, 1), (3, 5), (9, 12), (16, 33)])
def test_replay_chain_equals_the_exact_reference(hops: tuple[int, ...], batch: int, frames: int) -> None:
    """Every replay of a chain (C_0 -> C_1 -> ... with the hops of nominal and real pyramids) equals the definition."""
    generator = torch.Generator().manual_seed(sum(hops) + frames)
    bins = 4
    composite = torch.randn(batch, frames, bins, generator=generator, dtype=torch.float64)
    times = frame_centres(batch, frames, hops[0])
    for level, hop in enumerate(hops[1:], start=2):
        finer = torch.randn(batch, frames * level, bins, generator=generator, dtype=torch.float64)
        mask = special_masks(batch, frames)[torch.randperm(batch, generator=generator)]
        want, want_times = reference_replay(composite, times, finer, hop, mask)
        composite, times = replay(composite, times, finer, hop, mask)
        assert torch.equal(composite, want) and torch.equal(times, want_times)
        assert (times.diff(dim=1) >= 0).all()


@pytest.mark.parametrize("hops", [(12, 6, 4, 3), (200, 100, 67, 50), (80, 40, 27, 20)])
def test_time_coded_composites_show_their_source_times(hops: tuple[int, ...]) -> None:
    """Playbacks whose values are their own frame times: after every replay each composite value equals the time
    its frame claims to show, time never runs backwards, and each replayed frame lies in the time its salient run
    showed."""
    batch, frames = 64, 40
    generator = torch.Generator().manual_seed(7)
    composite = time_coded(batch, frames, hops[0], hops[0])
    times = frame_centres(batch, frames, hops[0])
    for level, hop in enumerate(hops[1:], start=2):
        finer = time_coded(batch, frames * level, hop, hops[0])
        mask = torch.rand(batch, frames, generator=generator) < torch.rand(batch, 1, generator=generator)
        bounds = stretch_bounds(times, hop, finer.shape[1])
        new, new_times = replay(composite, times, finer, hop, mask)
        assert torch.equal(new, (new_times.double() / hops[0])[..., None].expand_as(new))
        assert (new_times.diff(dim=1) >= 0).all()
        for b in range(batch):
            kept = set(times[b][~mask[b]].tolist())
            replayed = set()
            for u in mask[b].nonzero().flatten().tolist():
                replayed.update(range(int(bounds[b, u]) * hop, int(bounds[b, u + 1]) * hop, hop))
            assert set(new_times[b].tolist()) <= kept | replayed
        composite, times = new, new_times


def test_the_second_replay_reads_the_time_the_composite_shows() -> None:
    """By hand: after the first replay composite frame 2 shows playback-0 time 1.5, not 2; the second replay must
    splice the playback-2 frames around 1.5 (the old rule, frames [2 * 3, 3 * 3), would have read time 2-2.67)."""
    hop0, hop1, hop2 = 6, 3, 2
    c0 = time_coded(1, 4, hop0, hop0)
    c1, t1 = replay(c0, frame_centres(1, 4, hop0), time_coded(1, 8, hop1, hop0), hop1,
                    torch.tensor([[False, True, True, False]]))
    # Frames 1 and 2 shown at 0.5..2.5 (P1 frames 1..4): timeline 0, 0.5, 1, 1.5, 2, 3 (L = 6), read at 0, 1, 3, 4.
    assert t1.tolist() == [[0, 3, 9, 12]] and c1[0, :, 0].tolist() == [0.0, 0.5, 1.5, 2.0]
    c2, t2 = replay(c1, t1, time_coded(1, 12, hop2, hop0), hop2, torch.tensor([[False, False, True, False]]))
    # Frame 2 (time 1.5) stands for 1.0..1.75: P2 frames 3, 4, 5 (1.0, 1.33, 1.67); timeline 0, .5, 1, 1.33, 1.67, 2
    # (L = 6) read at 0, 1, 3, 4.
    assert t2.tolist() == [[0, 3, 8, 10]]
    assert torch.allclose(c2[0, :, 0], torch.tensor([0.0, 0.5, 4 / 3, 5 / 3], dtype=torch.float64))


def test_replay_fallback_cases_by_hand() -> None:
    composite = torch.arange(4.0).reshape(1, 4, 1)
    times = frame_centres(1, 4, 2)
    finer = 10 + torch.arange(8.0).reshape(1, 8, 1)
    # Empty mask keeps the composite; a full mask reads every finer frame once before the resize: [::2].
    assert torch.equal(replay(composite, times, finer, 1, torch.zeros(1, 4, dtype=torch.bool))[0], composite)
    full, full_times = replay(composite, times, finer, 1, torch.ones(1, 4, dtype=torch.bool))
    assert torch.equal(full, finer[:, ::2]) and full_times.tolist() == [[0, 2, 4, 6]]
    # Frame 1 (time 2) stands for 1..3: finer frames 1, 2. Timeline [0, 11, 12, 2, 3] (L = 5) read at 0, 1, 2, 3.
    new, new_times = replay(composite, times, finer, 1, torch.tensor([[False, True, False, False]]))
    assert new.flatten().tolist() == [0.0, 11.0, 12.0, 2.0] and new_times.tolist() == [[0, 1, 2, 4]]


def test_stretch_bounds_by_hand() -> None:
    # Times 0, 2, 4, 6 (doubled midpoints 2, 6, 10) at hop 1: frames from ceil(1) = 1, ceil(3) = 3, ceil(5) = 5.
    assert stretch_bounds(frame_centres(1, 4, 2), 1, 8).tolist() == [[0, 1, 3, 5, 8]]
    # A finer frame exactly on a midpoint belongs to the later stretch; bounds never pass the finer length.
    assert stretch_bounds(torch.tensor([[0, 3, 30]]), 3, 4).tolist() == [[0, 1, 4, 4]]


def test_mask_from_frame_times_reads_the_nearest_frame() -> None:
    events = torch.tensor([[False, True, True, False, False]])  # playback-0 frames 1 and 2, hop 4
    times = torch.tensor([[0, 2, 5, 6, 9, 10, 11, 14, 19]])
    # Nearest frames: 0, 1 (2 is halfway: the later), 1, 2 (6 halfway), 2, 3 (10 halfway), 3, 4, 4 (clamped).
    assert mask_from_frame_times(events, times, 4).tolist() == [[False, True, True, True, True, False, False, False,
                                                                  False]]


def test_random_span_mask_has_the_length_and_a_uniform_start() -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([0, 1, 3, 10, 12])
    for _ in range(20):
        mask = random_span_mask(lengths, 10)
        assert mask.sum(1).tolist() == [0, 1, 3, 10, 10]
        for row in mask[1:4]:
            (start, end), = reference_runs(row.tolist())
            assert end - start == row.sum()
    starts = torch.stack([random_span_mask(torch.tensor([4]), 10).long().argmax(1) for _ in range(3500)]).flatten()
    counts = torch.bincount(starts, minlength=7).double()  # 7 possible starts: 500 expected each
    assert counts.shape == (7,) and ((counts - 500).abs() < 100).all()


def test_replay_passes_gradients_to_both_sources() -> None:
    composite = torch.randn(2, 6, 3, requires_grad=True)
    finer = torch.randn(2, 12, 3, requires_grad=True)
    mask = torch.tensor([[False, True, True, False, False, False], [True] * 6])
    replay(composite, frame_centres(2, 6, 2), finer, 1, mask)[0].sum().backward()
    assert composite.grad[0].abs().sum() > 0 and finer.grad[0].abs().sum() > 0
    assert composite.grad[1].abs().sum() == 0  # a full mask reads only the finer playback


def test_replay_rejects_bad_inputs_with_clear_messages() -> None:
    composite = torch.zeros(2, 4, 3)
    times = frame_centres(2, 4, 2)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="B = 2 and F = 3"):
        replay(composite, times, torch.zeros(2, 7, 2), 1, mask)
    with pytest.raises(TypeError, match="bool"):
        replay(composite, times, torch.zeros(2, 8, 3), 1, mask.float())
    with pytest.raises(ValueError, match="positive int"):
        replay(composite, times, torch.zeros(2, 8, 3), 0, mask)
    with pytest.raises(ValueError, match="int64"):
        replay(composite, times.float(), torch.zeros(2, 8, 3), 1, mask)
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
    times = frame_centres(4, 10, 3)
    finer = torch.randn(4, 30, 3, generator=generator)
    mask = special_masks(4, 10)
    compiled_replay = _compile_or_skip(replay)
    for got, want in zip(compiled_replay(composite, times, finer, 1, mask), replay(composite, times, finer, 1, mask)):
        assert torch.equal(got, want)
    compiled_runs = _compile_or_skip(salient_runs)
    for got, want in zip(compiled_runs(mask), salient_runs(mask)):
        assert torch.equal(got, want)


def _tiny_playitback(replays: int, replay_source: str, clip_secs: str = "2.0", resolution: str = "fine"):
    from engine_utils import TINY_MODEL
    from playitback.config import load_config
    from playitback.models import build_model

    cfg = load_config(REPO / "configs/Demo/PlayItBackX2.yaml",
                      ["NUM_GPUS", "0", *TINY_MODEL, "AUDIO_DATA.CLIP_SECS", clip_secs, "MODEL.PLAYBACK", str(replays),
                       "DECODER.DEPTH", str(replays + 1), "MODEL.REPLAY", replay_source,
                       "DATA.EVENTS_FILE", "events.csv" if replay_source == "events" else "",
                       "MODEL.REPLAY_RESOLUTION", resolution])
    torch.manual_seed(replays)
    return cfg, build_model(cfg).eval()


@pytest.mark.parametrize("replays", [2, 3])
@pytest.mark.parametrize("replay_source", ["saliency", "events", "random"])
def test_playitback_composites_show_their_frame_times(replays: int, replay_source: str) -> None:
    """Time-coded playbacks through PlayItBack X2 and X3 (the hops of a real, rounded pyramid): every composite value
    equals its `frame_times`, times never run backwards, and the oracle replays exactly the event's time."""
    # 2.003 s crops (32,048 samples) of 16 frames: hops 2003, 1002, 668, 501, none an exact fraction of playback 0's.
    cfg, model = _tiny_playitback(replays, replay_source, clip_secs="2.003")
    hops = model.hops
    assert hops == [2003, 1002, 668, 501][: replays + 1]
    batch, frames0 = 12, cfg.AUDIO_DATA.FRAMES0
    # Random values in bins 1.. make the saliency vary; bin 0 carries the time code.
    playbacks = []
    for i, hop in enumerate(hops):
        playback = torch.randn(batch, frames0 * (i + 1), 128, generator=torch.Generator().manual_seed(i))
        playback[..., 0] = torch.arange(frames0 * (i + 1)) * hop / hops[0]
        playbacks.append(playback)
    events = torch.zeros(batch, frames0, dtype=torch.bool)
    for b in range(batch):
        events[b, b % 10: b % 10 + 1 + b % 5] = True
    with torch.no_grad():
        out = model(playbacks, replay_masks=events) if replay_source == "events" else model(playbacks)
    composites, times = out.composites, out.frame_times
    assert composites.shape == (batch, replays + 1, frames0, 128) and times.shape == (batch, replays + 1, frames0)
    torch.testing.assert_close(composites[..., 0], times, rtol=0, atol=1e-5)
    assert torch.equal(composites[:, 0], playbacks[0])
    assert (times.diff(dim=-1) >= 0).all()
    masks = out.replay_masks
    assert masks.any(-1).all()  # every sample replays something at every playback
    if replay_source == "events":
        # At every playback the replayed frames are those whose source time is nearest an event frame.
        for i in range(replays):
            nearest = (times[:, i] + 0.5).floor().long().clamp(0, frames0 - 1)
            assert torch.equal(masks[:, i], events.gather(1, nearest))
    if replay_source == "random":
        # As long as the salient frames would be, at a random place.
        from playitback.models.saliency import saliency_mask

        assert torch.equal(masks.sum(-1), saliency_mask(out.saliency[:, :replays].flatten(0, 1), model.budget).sum(-1)
                           .view(batch, replays))


def test_no_replay_re_reads_playback_zero() -> None:
    _, model = _tiny_playitback(2, "none")
    playbacks = [torch.randn(3, 16 * (i + 1), 128) for i in range(3)]
    with torch.no_grad():
        out = model(playbacks)
    assert not out.replay_masks.any()
    assert torch.equal(out.composites, playbacks[0][:, None].expand(-1, 3, -1, -1))
    assert torch.equal(out.frame_times, torch.arange(16.0).expand(3, 3, 16))


def test_coarse_playback_by_hand() -> None:
    """Playback 0 (hop 4) read at hop 2 and at hop 3: linear between its frames, held past its last one."""
    playback0 = torch.tensor([[[0.0], [10.0], [30.0]]])  # [B=1, T0=3, F=1], centres 0, 4, 8
    at_hop2 = coarse_playback(playback0, hop0=4, finer_hop=2, finer_frames=6)  # centres 0, 2, ..., 10
    assert torch.equal(at_hop2.flatten(), torch.tensor([0.0, 5.0, 10.0, 20.0, 30.0, 30.0]))
    at_hop3 = coarse_playback(playback0, hop0=4, finer_hop=3, finer_frames=4)  # centres 0, 3, 6, 9
    assert torch.allclose(at_hop3.flatten(), torch.tensor([0.0, 7.5, 20.0, 30.0]))
    with pytest.raises(ValueError, match=r"\[B, T0, F\]"):
        coarse_playback(playback0[0], 4, 2, 6)


@pytest.mark.parametrize("replay_source", ["saliency", "events"])
def test_coarse_replay_shows_playback_zero_at_the_replayed_times(replay_source: str) -> None:
    """MODEL.REPLAY_RESOLUTION coarse: the same frames are replayed (same masks, same source times as the fine replay
    of the same model), but every composite frame is playback 0 interpolated at its source time."""
    _, fine_model = _tiny_playitback(2, replay_source, clip_secs="2.003")
    _, model = _tiny_playitback(2, replay_source, clip_secs="2.003", resolution="coarse")
    model.load_state_dict(fine_model.state_dict())
    frames0, batch = 16, 6
    playbacks = [torch.randn(batch, frames0 * (i + 1), 128, generator=torch.Generator().manual_seed(i))
                 for i in range(3)]
    events = torch.zeros(batch, frames0, dtype=torch.bool)
    events[:, 3:7] = True
    kwargs = {"replay_masks": events} if replay_source == "events" else {}
    with torch.no_grad():
        out, fine = model(playbacks, **kwargs), fine_model(playbacks, **kwargs)
    # The first replay decides on playback 0 in both models, so its mask and the times it creates are the same.
    assert torch.equal(out.replay_masks[:, 0], fine.replay_masks[:, 0])
    assert torch.equal(out.frame_times[:, 1], fine.frame_times[:, 1])
    assert out.replay_masks.any()
    # Every composite frame, by a per-frame reference: linear interpolation of playback 0 at its source time.
    source = playbacks[0].numpy()
    for b in range(batch):
        for s in range(3):
            for u in range(frames0):
                t = min(float(out.frame_times[b, s, u]), frames0 - 1)
                lo = int(t)
                hi = min(lo + 1, frames0 - 1)
                want = source[b, lo] + (t - lo) * (source[b, hi] - source[b, lo])
                assert torch.allclose(out.composites[b, s, u], torch.from_numpy(want), atol=1e-5), (b, s, u)

"""SpecAugment and MixUp/CutMix against per-sample references and hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from playitback.data.augment import (
    MixUp,
    apply_spec_augment,
    draw_spec_augment_params,
    spec_augment,
)


def _spec(batch: int = 6, frames: int = 40, bins: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, bins, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# SpecAugment ---------------------------------------------------------------------------------------------------------

def test_disabled_spec_augment_is_identity() -> None:
    spec = _spec()
    out = spec_augment(spec, _gen(0), time_warp=0, freq_mask=0, time_mask=0)
    torch.testing.assert_close(out, spec, rtol=0, atol=1e-6)


def test_masks_hit_exactly_the_drawn_rows_and_columns() -> None:
    spec = _spec()
    params = draw_spec_augment_params(6, 40, 16, _gen(1), time_warp=0, freq_mask=8, num_freq_masks=3,
                                      time_mask=10, num_time_masks=2)
    out = apply_spec_augment(spec, params).numpy()
    for b in range(6):
        expected = spec[b].numpy().copy()
        mean = expected.mean()
        for start, width in zip(params.freq_starts[b].tolist(), params.freq_widths[b].tolist()):
            expected[:, start:start + width] = mean
        for start, width in zip(params.time_starts[b].tolist(), params.time_widths[b].tolist()):
            expected[start:start + width, :] = mean
        np.testing.assert_allclose(out[b], expected, rtol=0, atol=1e-6)


def test_drawn_parameters_stay_in_range_and_cover_it() -> None:
    params = draw_spec_augment_params(4000, 40, 16, _gen(2), time_warp=5, freq_mask=27, num_freq_masks=2,
                                      time_mask=7, num_time_masks=2)
    assert params.warp_centre.min() == 5 and params.warp_centre.max() == 34  # U[W, T - W)
    assert params.warp_shift.min() == -5 and params.warp_shift.max() == 5
    assert params.freq_widths.min() == 0 and params.freq_widths.max() == 16  # clipped to F
    assert params.time_widths.min() == 0 and params.time_widths.max() == 7
    assert (params.freq_starts >= 0).all() and (params.freq_starts + params.freq_widths <= 16).all()
    assert (params.time_starts >= 0).all() and (params.time_starts + params.time_widths <= 40).all()
    assert params.time_starts.max() == 40  # a zero-width mask may start at T


def _warp_numpy(x: np.ndarray, centre: int, shift: int) -> np.ndarray:
    """Per-sample time warp with np.interp: [0, t0) -> [0, t0 + w), [t0, T) -> [t0 + w, T), half-pixel centres."""
    frames = x.shape[0]
    boundary = centre + shift
    left = (np.arange(boundary) + 0.5) * centre / max(boundary, 1) - 0.5
    right = centre + (np.arange(frames - boundary) + 0.5) * (frames - centre) / (frames - boundary) - 0.5
    out = np.empty_like(x)
    for f in range(x.shape[1]):
        out[:boundary, f] = np.interp(left, np.arange(centre), x[:centre, f])
        out[boundary:, f] = np.interp(right, np.arange(centre, frames), x[centre:, f])
    return out


def test_time_warp_equals_numpy_and_interpolate_references() -> None:
    spec = _spec(batch=32)
    params = draw_spec_augment_params(32, 40, 16, _gen(3), time_warp=5, freq_mask=0, time_mask=0)
    out = apply_spec_augment(spec, params)
    for b in range(32):
        centre, shift = int(params.warp_centre[b]), int(params.warp_shift[b])
        expected = _warp_numpy(spec[b].double().numpy(), centre, shift)
        np.testing.assert_allclose(out[b].numpy(), expected, rtol=0, atol=1e-4)  # float32 positions
        # The same warp as torch's linear resize of each segment (the SpecAugment / torchaudio definition).
        segments = [(spec[b, :centre], centre + shift), (spec[b, centre:], 40 - centre - shift)]
        resized = [F.interpolate(seg.T[None], size=size, mode="linear", align_corners=False)[0].T
                   for seg, size in segments if size > 0]
        torch.testing.assert_close(out[b], torch.cat(resized), rtol=0, atol=1e-4)


def test_time_warp_is_local() -> None:
    frames = 400
    ramp = torch.arange(frames, dtype=torch.float32)[None, :, None].expand(64, frames, 3)
    params = draw_spec_augment_params(64, frames, 3, _gen(4), time_warp=5, freq_mask=0, time_mask=0)
    warped = apply_spec_augment(ramp, params)[..., 0]  # the source position of every output frame
    displacement = warped - torch.arange(frames)
    assert displacement.abs().max() <= 5 + 1e-4
    far = (torch.arange(frames)[None] - params.warp_centre[:, None]).abs() > 50
    assert displacement.abs()[far].max() <= 5 + 1e-4
    assert displacement.abs().max() > 1  # something did move


def test_spec_augment_is_reproducible_and_per_sample() -> None:
    spec = _spec()
    first = spec_augment(spec, _gen(5))
    torch.testing.assert_close(first, spec_augment(spec, _gen(5)), rtol=0, atol=0)
    assert not torch.equal(first, spec_augment(spec, _gen(6)))
    params = draw_spec_augment_params(6, 40, 16, _gen(5))
    torch.testing.assert_close(first, apply_spec_augment(spec, params), rtol=0, atol=0)
    assert len(set(params.warp_centre.tolist())) > 1  # each sample draws its own parameters


def test_spec_augment_errors() -> None:
    with pytest.raises(ValueError, match="time_warp"):
        spec_augment(_spec(frames=10), _gen(0), time_warp=5)
    with pytest.raises(ValueError, match=r"\[B, T, F\]"):
        spec_augment(torch.zeros(40, 16), _gen(0))


# MixUp / CutMix ------------------------------------------------------------------------------------------------------

def _pyramid(batch: int = 4, frames0: int = 10, bins: int = 8, playbacks: int = 3) -> list[torch.Tensor]:
    g = _gen(7)
    return [torch.randn(batch, frames0 * (i + 1), bins, generator=g) for i in range(playbacks)]


def _smoothed(labels: list[int], classes: int, smoothing: float) -> np.ndarray:
    out = np.full((len(labels), classes), smoothing / classes)
    out[np.arange(len(labels)), labels] = 1 - smoothing + smoothing / classes
    return out


def test_label_smoothing_without_mix() -> None:
    mixup = MixUp([5], prob=0.0, label_smoothing=0.1)
    playbacks = _pyramid()
    out, targets = mixup(playbacks, torch.tensor([0, 4, 2, 2]), _gen(0))
    np.testing.assert_allclose(targets.numpy(), _smoothed([0, 4, 2, 2], 5, 0.1), rtol=0, atol=1e-7)
    assert targets[0, 0].item() == pytest.approx(0.92) and targets[0, 1].item() == pytest.approx(0.02)
    for o, p in zip(out, playbacks):
        assert torch.equal(o, p)


def test_mixup_shares_lambda_and_flip_across_playbacks() -> None:
    mixup = MixUp([5], mixup_alpha=0.3, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.1)
    playbacks = _pyramid()
    labels = [0, 1, 2, 3]
    out, targets = mixup(playbacks, torch.tensor(labels), _gen(11))
    lam = mixup.draw(10, 8, _gen(11)).lam
    assert 0 < lam < 1
    smooth = _smoothed(labels, 5, 0.1)
    for b in range(4):
        partner = 3 - b
        np.testing.assert_allclose(targets[b].numpy(), lam * smooth[b] + (1 - lam) * smooth[partner], atol=1e-6)
        for o, p in zip(out, playbacks):
            torch.testing.assert_close(o[b], lam * p[b] + (1 - lam) * p[partner])


def test_cutmix_box_covers_the_same_seconds_in_every_playback() -> None:
    mixup = MixUp([5], mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, switch_prob=1.0, label_smoothing=0.0)
    batch, frames0, bins = 4, 20, 8
    # Every cell holds its sample index, so a cell that changed came from the flipped partner.
    playbacks = [torch.arange(batch, dtype=torch.float32)[:, None, None].expand(batch, frames0 * (i + 1), bins)
                 for i in range(4)]
    for seed in range(20):
        out, targets = mixup(playbacks, torch.tensor([0, 1, 2, 3]), _gen(seed))
        boxes = [(o != p) for o, p in zip(out, playbacks)]
        box0 = boxes[0][0]
        for i, box in enumerate(boxes):
            # Frame t of playback i lies in the same second as frame t // (i + 1) of playback 0.
            assert torch.equal(box[0], box0.repeat_interleave(i + 1, dim=0))
            assert torch.equal(out[i][0][box[0]], torch.full((int(box[0].sum()),), 3.0))
        lam = 1 - box0.float().mean().item()  # lambda corrected to the real box area
        np.testing.assert_allclose(targets[0, [0, 3]].numpy(), [lam, 1 - lam], atol=1e-6)


def test_multitask_targets_sum_to_one_per_block() -> None:
    mixup = MixUp([97, 300], prob=1.0, label_smoothing=0.1)
    labels = torch.tensor([[0, 299], [96, 5], [3, 3], [10, 0]])
    for seed in range(6):
        _, targets = mixup(_pyramid(), labels, _gen(seed))
        assert targets.shape == (4, 397)
        torch.testing.assert_close(targets[:, :97].sum(1), torch.ones(4))
        torch.testing.assert_close(targets[:, 97:].sum(1), torch.ones(4))
    _, unmixed = MixUp([97, 300], prob=0.0, label_smoothing=0.1)(_pyramid(), labels, _gen(0))
    assert unmixed[0, 0].item() == pytest.approx(1 - 0.1 + 0.1 / 97)
    assert unmixed[0, 97 + 299].item() == pytest.approx(1 - 0.1 + 0.1 / 300)
    assert unmixed[0, 97].item() == pytest.approx(0.1 / 300)


def test_multi_label_targets_are_mixed_without_smoothing() -> None:
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.float32)
    unmixed = MixUp([3], multi_label=True, prob=0.0)(_pyramid(), labels, _gen(0))[1]
    assert torch.equal(unmixed, labels)
    mixup = MixUp([3], multi_label=True, cutmix_alpha=0.0, prob=1.0)
    _, targets = mixup(_pyramid(), labels, _gen(3))
    lam = mixup.draw(10, 8, _gen(3)).lam
    torch.testing.assert_close(targets, lam * labels + (1 - lam) * labels.flip(0))


def test_mixup_is_reproducible() -> None:
    mixup = MixUp([5], prob=1.0)
    first = mixup(_pyramid(), torch.tensor([0, 1, 2, 3]), _gen(9))
    second = mixup(_pyramid(), torch.tensor([0, 1, 2, 3]), _gen(9))
    for a, b in zip(first[0], second[0]):
        assert torch.equal(a, b)
    assert torch.equal(first[1], second[1])


def test_mixup_errors() -> None:
    mixup = MixUp([5])
    with pytest.raises(ValueError, match="out of range"):
        mixup(_pyramid(), torch.tensor([0, 1, 2, 5]), _gen(0))
    with pytest.raises(ValueError, match="playback 1"):
        mixup([torch.zeros(4, 10, 8), torch.zeros(4, 15, 8)], torch.tensor([0, 1, 2, 3]), _gen(0))
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        MixUp([97, 300])(_pyramid(), torch.tensor([0, 1, 2, 3]), _gen(0))

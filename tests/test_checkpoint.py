"""Checkpoint I/O: atomic writes, epoch discovery, fallback past corrupt files, refusal of unsafe pickles, RNG state."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from playitback.engine import checkpoint_files as ckpt
from playitback.engine.checkpoint_files import (
    CheckpointError,
    UnsafeCheckpointError,
    best_checkpoint_path,
    checkpoint_path,
    latest_valid_checkpoint,
    list_epoch_checkpoints,
    load_checkpoint_file,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class _WritesMarker:
    """Unpickling this runs ``exec``, which creates a marker file: the code a weights-only load must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_paths() -> None:
    assert checkpoint_path("/out", 7) == Path("/out/checkpoints/checkpoint_epoch_00007.pyth")
    assert best_checkpoint_path("/out") == Path("/out/checkpoints/checkpoint_best.pyth")
    with pytest.raises(ValueError, match=r"the 0-based epoch \+ 1"):
        checkpoint_path("/out", 0)


def test_save_is_atomic_when_the_write_crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = checkpoint_path(tmp_path, 1)
    save_checkpoint(path, {"epoch": 0, "w": torch.ones(3)})
    real_save = torch.save

    def half_write_then_crash(obj: object, handle: object) -> None:
        real_save(obj, handle)
        handle.seek(0)
        handle.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 1, "w": torch.zeros(1000)})
    assert load_checkpoint_file(path)["epoch"] == 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_save_refuses_state_that_weights_only_cannot_load(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path, 1)
    with pytest.raises(CheckpointError, match="does not load with weights_only=True"):
        save_checkpoint(path, {"epoch": 0, "rng": np.random.get_state()})
    assert list(path.parent.iterdir()) == []


def test_listing_sorts_by_epoch_and_ignores_best_and_temporaries(tmp_path: Path) -> None:
    for epoch in (10, 9, 2):
        save_checkpoint(checkpoint_path(tmp_path, epoch), {"epoch": epoch - 1})
    save_checkpoint(best_checkpoint_path(tmp_path), {"epoch": 1})
    directory = tmp_path / "checkpoints"
    # What a killed writer leaves behind, and names that only look similar.
    strays = (".checkpoint_epoch_00011.pyth.x1y2.tmp", "checkpoint_epoch_00011.pyth.tmp", "checkpoint_epoch_12.pyth")
    for stray in strays:
        (directory / stray).write_bytes(b"partial")
    assert list_epoch_checkpoints(tmp_path) == [(e, checkpoint_path(tmp_path, e)) for e in (2, 9, 10)]
    assert list_epoch_checkpoints(tmp_path / "missing") == []
    path, state = latest_valid_checkpoint(tmp_path)
    assert path == checkpoint_path(tmp_path, 10) and state["epoch"] == 9


def test_truncated_newest_checkpoint_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for epoch in (1, 2):
        save_checkpoint(checkpoint_path(tmp_path, epoch), {"epoch": epoch - 1, "w": torch.randn(256)})
    newest = checkpoint_path(tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="checkpoint_epoch_00002.pyth is truncated or corrupt"):
        load_checkpoint_file(newest)
    with caplog.at_level(logging.WARNING, logger="playitback.engine.checkpoint_files"):
        path, state = latest_valid_checkpoint(tmp_path)
    assert path == checkpoint_path(tmp_path, 1) and state["epoch"] == 0
    assert "checkpoint_epoch_00002.pyth" in caplog.text
    newest.unlink()
    checkpoint_path(tmp_path, 1).write_bytes(b"")
    assert latest_valid_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="checkpoint_epoch_00002.pyth does not exist"):
        load_checkpoint_file(newest)


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = checkpoint_path(tmp_path, 3)
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 2, "payload": _WritesMarker(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load checkpoint .*checkpoint_epoch_00003\.pyth.*"
                                                    r"builtins\.exec.*arbitrary code"):
        load_checkpoint_file(path)
    with pytest.raises(UnsafeCheckpointError):
        latest_valid_checkpoint(tmp_path)
    assert not marker.exists()
    # Control: an unsafe load really would run the payload, so the check above is meaningful.
    torch.load(path, weights_only=False)
    assert marker.exists()


def _draw() -> tuple[float, float, np.ndarray, torch.Tensor]:
    # The Gaussians come first so the cached second value of each pair must survive the round trip.
    return random.gauss(0, 1), random.random(), np.random.randn(3), torch.rand(3)


def test_rng_state_round_trip_reproduces_random_numbers(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)   # leaves a cached Gaussian in Python's state
    np.random.randn()    # and one in numpy's
    path = tmp_path / "rng.pyth"
    save_checkpoint(path, {"rng_state": rng_state()})
    expected = _draw()
    _draw()
    set_rng_state(load_checkpoint_file(path)["rng_state"])
    got = _draw()
    assert got[:2] == expected[:2]
    np.testing.assert_array_equal(got[2], expected[2])
    assert torch.equal(got[3], expected[3])


def _identical(a: object, b: object) -> bool:
    """Exact, recursive equality of nested containers of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_trainer_checkpoint_round_trips_with_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    scaler = torch.amp.GradScaler("cpu")
    for optimizer in (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True),
                      torch.optim.AdamW(model.parameters(), lr=1e-3)):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        state = {
            "epoch": 4, "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
            "cfg": "SOLVER:\n  BASE_LR: 0.1\n", "scaler_state": scaler.state_dict(), "rng_state": rng_state(),
            "iteration_in_epoch": 17, "global_step": 517, "best_metric": 43.21,
        }
        path = checkpoint_path(tmp_path, 5)
        save_checkpoint(path, state)
        loaded = load_checkpoint_file(path)
        assert loaded.keys() == state.keys()
        assert _identical(loaded, state)
        restored = type(optimizer)(model.parameters(), lr=0.5)
        restored.load_state_dict(loaded["optimizer_state"])
        set_rng_state(loaded["rng_state"])
    assert ckpt.CHECKPOINT_RE == r"checkpoint_epoch_(\d{5})\.pyth"

"""Fault injection: kill -9 while a checkpoint is being written, a corrupt newest checkpoint, untrusted files."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from playitback.data.annotations import AnnotationError, read_annotations

from playitback.engine import checkpoint as ckpt

WRITER = """
import sys, torch
from playitback.engine.checkpoint import save_checkpoint
print("writing", flush=True)
save_checkpoint(sys.argv[1], {"epoch": 1, "model_state": {"w": torch.ones(64, 1024, 1024)}})
print("done", flush=True)
"""


def test_kill9_during_checkpoint_write_never_leaves_a_half_written_file(tmp_path: Path) -> None:
    path = ckpt.checkpoint_path(tmp_path, 2)
    ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 1), {"epoch": 0, "model_state": {"w": torch.zeros(3)}})
    for delay in (0.3, 0.8, 1.5):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "writing"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        # The final path holds nothing or a complete checkpoint; temporaries are never taken for checkpoints.
        if path.exists():
            assert ckpt.load_checkpoint_file(path)["model_state"]["w"].shape == (64, 1024, 1024)
            path.unlink()
        assert [epoch for epoch, _ in ckpt.list_epoch_checkpoints(tmp_path)] == [1]
        found = ckpt.latest_valid_checkpoint(tmp_path)
        assert found is not None and found[1]["epoch"] == 0
    for leftover in tmp_path.glob("checkpoints/.*.tmp"):
        leftover.unlink()


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    for epoch in (1, 2, 3):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, epoch), {"epoch": epoch - 1, "model_state": {}})
    newest = ckpt.checkpoint_path(tmp_path, 3)
    newest.write_bytes(newest.read_bytes()[:40])  # a node died mid-copy, outside our writer
    path, state = ckpt.latest_valid_checkpoint(tmp_path)
    assert path == ckpt.checkpoint_path(tmp_path, 2) and state["epoch"] == 1
    assert "checkpoint_epoch_00003.pyth" in caplog.text


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pyth"
    torch.save({"model_state": {}, "payload": _Exploit(marker)}, path)
    with pytest.raises(ckpt.UnsafeCheckpointError, match="refusing to load checkpoint"):
        ckpt.load_checkpoint_file(path)
    assert not marker.exists()


def test_malicious_annotation_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "train.pkl"
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(AnnotationError, match="refusing to unpickle the global .(posix|os).system"):
        read_annotations(path, "vggsound")
    assert not marker.exists()

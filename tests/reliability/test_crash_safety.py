"""Fault injection: kill -9 while a checkpoint is being written, a corrupt newest checkpoint, untrusted files."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from playitback.data.annotations import AnnotationError, read_annotations
from playitback.engine import checkpoint_files as ckpt

# Writes a checkpoint and stalls at a chosen point of the write, so that the kill provably lands there: "half" after
# half of the serialised bytes reached the temporary file, "unrenamed" when the file is complete but not yet renamed.
WRITER = """
import io, os, sys, time, torch
from playitback.engine.checkpoint_files import save_checkpoint

def stall():
    print("stalled", flush=True)
    time.sleep(600)

real_save, real_fsync = torch.save, os.fsync
def save_half(obj, handle):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    handle.flush()
    stall()
def fsync_then_stall(fd):
    real_fsync(fd)
    stall()

if sys.argv[2] == "half":
    torch.save = save_half
else:
    os.fsync = fsync_then_stall
save_checkpoint(sys.argv[1], {"epoch": 1, "model_state": {"w": torch.ones(1024, 1024)}})
"""


@pytest.mark.parametrize("stage", ["half", "unrenamed"])
def test_kill9_during_checkpoint_write_never_leaves_a_half_written_file(tmp_path: Path, stage: str) -> None:
    path = ckpt.checkpoint_path(tmp_path, 2)
    ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 1), {"epoch": 0, "model_state": {"w": torch.zeros(3)}})
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path), stage], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "stalled"
        # The kill lands mid-write: the bytes are in a temporary file and the final path does not exist yet.
        (temporary,) = path.parent.glob(f".{path.name}.*.tmp")
        full_size = 4 * 1024 * 1024
        assert (temporary.stat().st_size < full_size) if stage == "half" else temporary.stat().st_size > full_size
        assert not path.exists()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    # Temporaries are never taken for checkpoints: the last complete one is what resumes.
    assert not path.exists()
    assert [epoch for epoch, _ in ckpt.list_epoch_checkpoints(tmp_path)] == [1]
    found = ckpt.latest_valid_checkpoint(tmp_path)
    assert found is not None and found[1]["epoch"] == 0


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

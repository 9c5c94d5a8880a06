"""A distributed run with a dead, failing or stuck process (2 gloo processes, no SLURM needed).

Under `torchrun --max-restarts 1` a process killed with SIGKILL, or one that raises, in the middle of epoch 2 makes
torchrun restart the group, which resumes from the last checkpoint and ends exactly like the uninterrupted run.
Without a launcher that restarts (two processes started on their own, as on two nodes), the surviving process stops
with a LostProcessError naming what happened, within seconds for a dead or failing peer and within DIST_TIMEOUT_SECS
for a stuck one, instead of hanging.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster import free_port
from jobs import (
    ITERS_PER_EPOCH,
    REPO,
    TORCHRUN,
    assert_same_run,
    in_epoch,
    job_env,
    resumed_iterations,
    run_command,
    wait_for,
)

pytestmark = pytest.mark.slurm

FAULTY = str(Path(__file__).resolve().parent / "faulty_run_net.py")
RUN_TIMEOUT_S = 300
LOST_PROCESS = "LostProcessError: process 0 of 2 stops in stage train: a collective operation with the other processes failed"


def start(command: list[str], **env: str) -> subprocess.Popen:
    """Start a command in its own process group, so that everything it starts can be stopped with it."""
    return subprocess.Popen(command, cwd=REPO, env=job_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def torchrun(max_restarts: int) -> list[str]:
    return [TORCHRUN, "--nproc_per_node", "2", "--max-restarts", str(max_restarts), "--master_port", str(free_port())]


def torchrun_worker(agent: subprocess.Popen, rank: int) -> psutil.Process:
    """The training process of `rank` that torchrun started (not one of its DataLoader workers)."""
    for child in psutil.Process(agent.pid).children():
        if child.environ().get("RANK") == str(rank):
            return child
    raise AssertionError(f"torchrun has no worker of rank {rank}")


def communicate(process: subprocess.Popen, timeout_s: float = RUN_TIMEOUT_S) -> str:
    """The output of a process once it ended (with everything it started: they share its output pipe)."""
    try:
        return process.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        stop_group(process)
        pytest.fail(f"the run did not end within {timeout_s} s:\n{process.communicate(timeout=30)[0][-4000:]}")


def test_torchrun_restarts_a_group_whose_process_was_killed_and_resumes_exactly(job_data: Path, reference_run: Path,
                                                                                 tmp_path: Path) -> None:
    agent = start(torchrun(1) + run_command(tmp_path, job_data))
    wait_for(lambda: in_epoch(tmp_path, 2, 3), "iteration 3 of epoch 2", RUN_TIMEOUT_S,
             alive=lambda: agent.poll() is None)
    survivor, victim = torchrun_worker(agent, 0), torchrun_worker(agent, 1)
    survivor.suspend()  # held, so that epoch 2 cannot end before the kill however fast the steps are
    victim.kill()  # SIGKILL: nothing of epoch 2 is saved
    survivor.resume()
    output = communicate(agent)
    assert agent.returncode == 0, output[-4000:]
    assert "exitcode: -9" in output, output[-4000:]
    # The restarted group found the end of epoch 1 (epoch 1 of 2 done, all its 12 iterations).
    assert resumed_iterations(tmp_path) == [(1, ITERS_PER_EPOCH)]
    assert_same_run(reference_run, tmp_path)


def test_torchrun_restarts_a_group_whose_process_raised_and_resumes_exactly(job_data: Path, reference_run: Path,
                                                                           tmp_path: Path) -> None:
    fault_step = ITERS_PER_EPOCH + 3  # iteration 3 of epoch 2
    command = run_command(tmp_path, job_data)
    agent = start(torchrun(1) + [FAULTY, "--raise-at", "1", str(fault_step), *command[1:]])
    output = communicate(agent)
    assert agent.returncode == 0, output[-4000:]
    assert f"injected fault: process 1 raises at its training step {fault_step}" in output, output[-4000:]
    assert resumed_iterations(tmp_path) == [(1, ITERS_PER_EPOCH)]
    assert_same_run(reference_run, tmp_path)


def start_two_processes(command: list[str], timeout_s: int) -> list[subprocess.Popen]:
    """Two processes of one job started on their own, as on two nodes: nothing restarts or stops the survivor."""
    port = str(free_port())
    return [start([sys.executable, *command, "DIST_TIMEOUT_SECS", str(timeout_s)], RANK=str(rank), WORLD_SIZE="2",
                  LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for rank in range(2)]


def survivor_stops(survivor: subprocess.Popen, within_s: float) -> tuple[str, float]:
    """The survivor's output and how long it took to exit from now (the fault); it must exit with an error in time."""
    start_s = time.monotonic()
    output = communicate(survivor, within_s)
    took = time.monotonic() - start_s
    assert survivor.returncode != 0, output[-4000:]
    assert LOST_PROCESS in output, output[-4000:]
    assert "restarting the same command resumes from it" in output
    return output, took


@pytest.mark.parametrize("fault", ["kill", "raise", "stuck"])
def test_survivor_stops_with_a_clear_error_instead_of_hanging(job_data: Path, tmp_path: Path, fault: str) -> None:
    """Rank 1 is killed (SIGKILL), raises, or is stuck (SIGSTOP) at iteration 3 of epoch 1; rank 0 must exit with
    LostProcessError: at once for a dead or failing peer (its connections close), after DIST_TIMEOUT_SECS (10 s here)
    for a stuck one."""
    timeout_s = 10
    command = run_command(tmp_path, job_data)
    if fault == "raise":
        command = [FAULTY, "--raise-at", "1", "3", *command[1:]]
    survivor, peer = start_two_processes(command, timeout_s)
    try:
        if fault == "raise":
            peer_output = communicate(peer)
            assert "injected fault: process 1 raises at its training step 3" in peer_output, peer_output[-4000:]
        else:
            wait_for(lambda: in_epoch(tmp_path, 1, 3), "iteration 3 of epoch 1", RUN_TIMEOUT_S,
                     alive=lambda: survivor.poll() is None)
            survivor.send_signal(signal.SIGSTOP)  # held while the fault is made, so that it comes mid-epoch
            peer.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
            survivor.send_signal(signal.SIGCONT)
        output, took = survivor_stops(survivor, within_s=timeout_s + 60)
        assert f"DIST_TIMEOUT_SECS ({timeout_s} s)" in output
        if fault == "stuck":
            assert "Timed out" in output and took >= timeout_s - 1, (took, output[-2000:])
        else:
            assert took < 30, took
        assert not (tmp_path / "checkpoints" / f"checkpoint_epoch_{1:05d}.pyth").exists()
    finally:
        for process in (survivor, peer):
            stop_group(process)
            process.wait()

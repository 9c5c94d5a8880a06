"""Helpers of the multi-process job tests: the runs' settings, comparisons with the reference run, log watching.

Every run here trains the demo PlayItBack (X2, tiny size) for 2 epochs of 12 iterations (global batch 8) with 2
processes (gloo, 1 DataLoader worker each), so that a run can be interrupted in the middle of epoch 2.
"""
from __future__ import annotations

import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch

from cluster import LocalSlurmCluster
from engine_utils import REPO, metrics, run_opts

PLAYITBACK = "configs/Demo/PlayItBackX2.yaml"
EPOCHS, ITERS_PER_EPOCH = 2, 12
METRIC_KEYS = ("top1_acc", "top5_acc", "mAP", "AUC", "dprime", "loss")
JOB_TIMEOUT_S = 300
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def job_opts(data: Path, output_dir: Path) -> list[str]:
    """The overrides of every run of this folder. DIST_TIMEOUT_SECS bounds any hang to 2 minutes."""
    return run_opts(data, output_dir, epochs=EPOCHS, batch=8, workers=1) + ["DIST_TIMEOUT_SECS", "120"]


def run_command(output_dir: Path, data: Path) -> list[str]:
    """tools/run_net.py and its arguments for a run writing to `output_dir`."""
    return [str(REPO / "tools" / "run_net.py"), "--cfg", str(REPO / PLAYITBACK), *job_opts(data, output_dir)]


def job_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    path = output_dir / "checkpoints" / f"checkpoint_epoch_{EPOCHS:05d}.pyth"
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def assert_same_run(reference: Path, run: Path) -> float:
    """Final weights and final validation metrics of `run` equal the reference's bit for bit (same processes, same
    seeds: a resumed run replays exactly what the uninterrupted one did). Returns the largest weight difference."""
    expected, found = final_weights(reference), final_weights(run)
    assert expected.keys() == found.keys()
    largest = max(float((expected[k].double() - found[k].double()).abs().max()) for k in expected if expected[k].numel())
    for key in expected:
        assert torch.equal(expected[key], found[key]), f"{key} differs by up to {largest:.3g}"
    val_expected, val_found = metrics(reference, "val_epoch"), metrics(run, "val_epoch")
    assert [r["epoch"] for r in val_found][-1] == EPOCHS
    assert {k: val_found[-1][k] for k in METRIC_KEYS} == {k: val_expected[-1][k] for k in METRIC_KEYS}
    return largest


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float, alive: Callable[[], bool] = lambda: True,
             poll_s: float = 0.1, details: Callable[[], str] = lambda: "") -> None:
    """Poll `condition` until true; fail naming `what` (and `details()`, the state that explains it) after
    `timeout_s`, or as soon as `alive()` turns false."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if not alive():
            pytest.fail(f"the run ended before {what}\n{details()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{details()}")
        time.sleep(poll_s)


def in_epoch(output_dir: Path, epoch: int, iteration: int) -> bool:
    """Whether the run logged iteration `iteration` of `epoch` (its main process's OUTPUT_DIR/stdout.log)."""
    log = output_dir / "stdout.log"
    if not log.is_file():
        return False
    marker = f'"epoch": "{epoch}/{EPOCHS}", "eta": '
    return any(marker in line and f'"iter": "{iteration}/{ITERS_PER_EPOCH}"' in line
               for line in log.read_text().splitlines())


def resumed_iterations(output_dir: Path) -> list[tuple[int, int]]:
    """(epoch, iteration) of every resumption the run logged."""
    text = (output_dir / "stdout.log").read_text()
    return [(int(e), int(i)) for e, i in re.findall(r"resumed from \S+: epoch (\d+), iteration (\d+)", text)]


def pending_signals(pid: int) -> set[int]:
    """Signals delivered to a process but not handled yet (a stopped process keeps them pending)."""
    pending = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("SigPnd:", "ShdPnd:")):
                pending |= int(line.split()[1], 16)
    return {bit + 1 for bit in range(64) if pending >> bit & 1}


def signal_reached(tasks: list[psutil.Process], signum: int) -> bool:
    """Whether `signum` reached every one of the (stopped) `tasks`: pending in it, or already handled (slurmstepd
    sends SIGCONT with some signals, and a task that handled it may have ended)."""
    for task in tasks:
        try:
            if task.status() == psutil.STATUS_STOPPED and signum not in pending_signals(task.pid):
                return False
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
    return True


# ---------------------------------------------------------------------------------------------------------------------
# SLURM jobs (tests/slurm/test_jobs.py).
# ---------------------------------------------------------------------------------------------------------------------
def job_alive(cluster: LocalSlurmCluster, job_id: str) -> bool:
    return cluster.job(job_id).get("JobState") in ("PENDING", "CONFIGURING", "RUNNING", "STOPPED", "REQUEUED",
                                                   "COMPLETING")


def wait_until_mid_epoch(cluster: LocalSlurmCluster, job_id: str, output_dir: Path, task_command: str) -> None:
    """Wait until the job's run logged iteration 3 of epoch 2, then hold its tasks (`task_command` in their command
    line) with SIGSTOP so that the epoch cannot end before what the test does next, however fast the steps are; return
    once both are stopped. SLURM sends SIGCONT before the signals of a requeue; `meet_time_limit_mid_epoch` resumes
    the tasks itself.

    `scancel --signal` returns before the signal is delivered (slurmctld hands it to slurmd, which hands it to the
    step): on a loaded machine a STOP that the test did not wait for can land after the SIGCONT that was to resume
    the tasks, and leaves them stopped until the job is killed."""
    wait_for(lambda: in_epoch(output_dir, 2, 3), "iteration 3 of epoch 2", JOB_TIMEOUT_S,
             alive=lambda: job_alive(cluster, job_id))
    cluster.command("scancel", "--signal", "STOP", job_id)  # the job steps, not the batch shell
    tasks = cluster.job_processes(job_id, task_command)
    assert len(tasks) == 2, tasks
    # Alive while the tasks exist (a job being stopped passes through states that job_alive does not list).
    wait_for(lambda: all(_stopped(task) for task in tasks), "SIGSTOP to reach both tasks", 60,
             alive=lambda: all(task.is_running() for task in tasks), details=lambda: job_state(cluster, job_id))


def _stopped(task: psutil.Process) -> bool:
    try:
        return task.status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def finish(cluster: LocalSlurmCluster, job_id: str, logs: Callable[[], str]) -> dict[str, str]:
    """Wait for the job to end; it must have COMPLETED (else fail with its fields and the end of `logs()`)."""
    info = cluster.wait_for_job(job_id, JOB_TIMEOUT_S)
    assert info["JobState"] == "COMPLETED", f"job {job_id}: {info}\n{logs()[-4000:]}"
    return info


def job_state(cluster: LocalSlurmCluster, job_id: str) -> str:
    """What explains a job that does not do what a test waits for: its SLURM fields and the controller's log."""
    fields = cluster.job(job_id)
    shown = {key: fields.get(key) for key in ("JobState", "Reason", "Restarts", "RunTime", "TimeLimit", "EndTime")}
    log = cluster.logs / "slurmctld.log"
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.is_file() else f"(no {log})"
    return f"job {job_id}: {shown}\nslurmctld.log (last 40 lines):\n{tail}"


def meet_time_limit_mid_epoch(cluster: LocalSlurmCluster, job_id: str, task_command: str, warning: int) -> None:
    """Bring the running job's time limit close, now, so that SLURM's warning lands in the middle of an epoch.

    The job's tasks (`task_command` in their command line) are held by `wait_until_mid_epoch`. Its limit is cut to
    1.5-2.5 minutes from now: SLURM sends the warning (asked for 120 s before the limit) at its next periodic check,
    which comes every 30 s. Once the warning has reached the held tasks they are resumed, so that the run cannot end
    first however the check falls. Once the job has requeued itself its limit is given back, so that the requeued job
    is not warned at once.
    """
    limit_min = math.ceil((cluster.run_seconds(job_id) + 90) / 60)
    cluster.command("scontrol", "update", f"JobId={job_id}", f"TimeLimit={limit_min}")
    tasks = cluster.job_processes(job_id, task_command)
    assert len(tasks) == 2, tasks
    wait_for(lambda: signal_reached(tasks, warning), f"SLURM's time-limit warning ({signal.Signals(warning).name})",
             90)
    cluster.command("scancel", "--signal", "CONT", job_id)
    wait_for(lambda: cluster.job(job_id).get("Restarts", "0") != "0", "the job to requeue itself", 120,
             details=lambda: job_state(cluster, job_id))
    cluster.command("scontrol", "update", f"JobId={job_id}", "TimeLimit=10")


def assert_resumed_mid_epoch(output_dir: Path, stopped_by: str) -> None:
    """The run stopped once on `stopped_by`, in epoch 2 after iteration 3, and resumed once from that position."""
    assert f"stopped by {stopped_by}" in (output_dir / "stdout.log").read_text()
    [(epoch, iteration)] = resumed_iterations(output_dir)
    assert epoch == 2 and 3 <= iteration < ITERS_PER_EPOCH

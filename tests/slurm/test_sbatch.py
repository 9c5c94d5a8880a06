"""tools/slurm/run_net.sbatch on a real (private, one-node) SLURM cluster: 2 CPU tasks (--gpus-per-node 0).

A job trains to the end like the same run under torchrun; a job requeued in the middle of an epoch (preemption) and a
job that meets its time limit in the middle of an epoch both save, come back, resume and end with the same weights and
metrics as the uninterrupted run.
"""
from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

import pytest

from cluster import LocalSlurmCluster
from jobs import (ITERS_PER_EPOCH, PLAYITBACK, REPO, assert_same_run, in_epoch, job_opts, resumed_iterations,
                  signal_reached, wait_for)

pytestmark = pytest.mark.slurm

TEMPLATE = REPO / "tools" / "slurm" / "run_net.sbatch"
JOB_TIMEOUT_S = 300


def submit(cluster: LocalSlurmCluster, data: Path, out: Path, *sbatch_args: str) -> str:
    """Submit the template for a 2-task CPU job writing to `out`; returns the job id."""
    out.mkdir(parents=True, exist_ok=True)
    result = cluster.command(
        "sbatch", "--parsable", "--chdir", str(REPO), "--output", str(out / "slurm-%j.out"), "--nodes", "1",
        "--ntasks-per-node", "2", "--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "10", *sbatch_args,
        str(TEMPLATE), "--cfg", str(REPO / PLAYITBACK), *job_opts(data, out),
        env={"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    return result.stdout.strip().split(";")[0]


def slurm_output(out: Path, job_id: str) -> str:
    return (out / f"slurm-{job_id}.out").read_text()


def running(cluster: LocalSlurmCluster, job_id: str) -> bool:
    return cluster.job(job_id).get("JobState") in ("PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "COMPLETING")


def finish(cluster: LocalSlurmCluster, job_id: str, out: Path) -> dict[str, str]:
    info = cluster.wait_for_job(job_id, JOB_TIMEOUT_S)
    assert info["JobState"] == "COMPLETED", f"job {job_id}: {info}\n{slurm_output(out, job_id)[-4000:]}"
    return info


def test_job_trains_to_the_end_like_torchrun(slurm_cluster: LocalSlurmCluster, job_data: Path, reference_run: Path,
                                             tmp_path: Path) -> None:
    job = submit(slurm_cluster, job_data, tmp_path)
    info = finish(slurm_cluster, job, tmp_path)
    assert info["Restarts"] == "0"
    assert "1 node(s) x 2 task(s), CPU processes (gloo)" in slurm_output(tmp_path, job)
    assert "2 process(es)" in (tmp_path / "stdout.log").read_text()
    assert_same_run(reference_run, tmp_path)


def test_preempted_job_is_requeued_and_resumes_exactly(slurm_cluster: LocalSlurmCluster, job_data: Path,
                                                       reference_run: Path, tmp_path: Path) -> None:
    """`scontrol requeue` in the middle of epoch 2: SLURM sends SIGTERM to the batch shell and every process of the job
    (DataLoader workers included); the tasks save at their next step, and the requeued job resumes from there."""
    job = submit(slurm_cluster, job_data, tmp_path)
    wait_for(lambda: in_epoch(tmp_path, 2, 3), "iteration 3 of epoch 2", JOB_TIMEOUT_S,
             alive=lambda: running(slurm_cluster, job))
    slurm_cluster.command("scontrol", "requeue", job)
    info = finish(slurm_cluster, job, tmp_path)
    assert info["Restarts"] == "1"
    output = slurm_output(tmp_path, job)
    assert "DUE TO JOB REQUEUE" in output and "SIGTERM (preemption or requeue)" in output, output
    assert "job {} (restart 1)".format(job) in output
    log = (tmp_path / "stdout.log").read_text()
    assert "stopped by SIGTERM" in log
    [(epoch, iteration)] = resumed_iterations(tmp_path)
    assert epoch == 2 and 3 <= iteration < ITERS_PER_EPOCH  # resumed mid-epoch, from the checkpoint of the stop
    assert_same_run(reference_run, tmp_path)


def test_job_at_its_time_limit_saves_requeues_itself_and_finishes(slurm_cluster: LocalSlurmCluster, job_data: Path,
                                                                  reference_run: Path, tmp_path: Path) -> None:
    """The template asks SLURM for USR1 120 s before the time limit. In the middle of epoch 2 the running job's limit
    is cut to 1.5-2.5 minutes from now, so that SLURM's warning comes at its next periodic check (every 30 s); the
    tasks are held (SIGSTOP) until the warning is pending in them, so that it lands mid-epoch however the check falls.
    The job saves, requeues itself, and the requeued job (its limit given back) resumes and finishes."""
    job = submit(slurm_cluster, job_data, tmp_path)
    wait_for(lambda: in_epoch(tmp_path, 2, 3), "iteration 3 of epoch 2", JOB_TIMEOUT_S,
             alive=lambda: running(slurm_cluster, job))
    slurm_cluster.command("scancel", "--signal", "STOP", job)  # the job steps, not the batch shell
    limit_min = math.ceil((slurm_cluster.run_seconds(job) + 90) / 60)
    slurm_cluster.command("scontrol", "update", f"JobId={job}", f"TimeLimit={limit_min}")
    tasks = slurm_cluster.job_processes(job, "tools/run_net.py")
    assert len(tasks) == 2, tasks
    wait_for(lambda: signal_reached(tasks, signal.SIGUSR1),
             "SLURM's time-limit warning (USR1 forwarded by the template)", 90)
    slurm_cluster.command("scancel", "--signal", "CONT", job)
    wait_for(lambda: slurm_cluster.job(job).get("Restarts", "0") != "0", "the job to requeue itself", 120)
    slurm_cluster.command("scontrol", "update", f"JobId={job}", "TimeLimit=10")
    info = finish(slurm_cluster, job, tmp_path)
    assert info["Restarts"] == "1"
    output = slurm_output(tmp_path, job)
    assert "time limit near (SLURM's warning signal)" in output and f"requeueing job {job}" in output, output
    assert "stopped by SIGUSR1" in (tmp_path / "stdout.log").read_text()
    [(epoch, iteration)] = resumed_iterations(tmp_path)
    assert epoch == 2 and 3 <= iteration < ITERS_PER_EPOCH
    assert_same_run(reference_run, tmp_path)

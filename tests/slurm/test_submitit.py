"""tools/submit_slurm.py (submitit) on the private SLURM cluster: 2 CPU tasks (--gpus-per-node 0 --tasks-per-node 2).

The same three cases as test_sbatch.py: a job trains to the end like torchrun; a job requeued mid-epoch (preemption)
and a job that meets its time limit mid-epoch (submitit's USR2 warning, then submitit's own requeue through
RunNetJob.checkpoint) both end with the weights and metrics of the uninterrupted run.
"""
from __future__ import annotations

import math
import re
import signal
import sys
from pathlib import Path

import pytest

from cluster import LocalSlurmCluster
from jobs import (ITERS_PER_EPOCH, PLAYITBACK, REPO, assert_same_run, in_epoch, job_opts, resumed_iterations,
                  signal_reached, wait_for)

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 300
TASK_COMMAND = "submitit.core._submit"


def submit(cluster: LocalSlurmCluster, data: Path, out: Path) -> str:
    """tools/submit_slurm.py for a 2-task CPU job writing to `out` (submitit's files in out/submitit); the job id."""
    result = cluster.command(
        sys.executable, str(REPO / "tools" / "submit_slurm.py"), "--cfg", str(REPO / PLAYITBACK), "--nodes", "1",
        "--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1", "--timeout-min", "10",
        "--logs", str(out / "submitit"), *job_opts(data, out), env={"OMP_NUM_THREADS": "1"}, cwd=REPO)
    match = re.search(r"submitted job (\d+) \(1 node\(s\) x 2 CPU process\(es\)\)", result.stdout)
    assert match, result.stdout + result.stderr
    return match.group(1)


def submitit_logs(out: Path, job_id: str) -> str:
    return "\n".join(path.read_text() for path in sorted((out / "submitit").glob(f"{job_id}_*_log.*")))


def running(cluster: LocalSlurmCluster, job_id: str) -> bool:
    return cluster.job(job_id).get("JobState") in ("PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "COMPLETING")


def finish(cluster: LocalSlurmCluster, job_id: str, out: Path) -> dict[str, str]:
    info = cluster.wait_for_job(job_id, JOB_TIMEOUT_S)
    assert info["JobState"] == "COMPLETED", f"job {job_id}: {info}\n{submitit_logs(out, job_id)[-4000:]}"
    return info


def test_submitit_job_trains_to_the_end_like_torchrun(slurm_cluster: LocalSlurmCluster, job_data: Path,
                                                      reference_run: Path, tmp_path: Path) -> None:
    job = submit(slurm_cluster, job_data, tmp_path)
    info = finish(slurm_cluster, job, tmp_path)
    assert info["Restarts"] == "0"
    assert "2 process(es)" in (tmp_path / "stdout.log").read_text()
    assert_same_run(reference_run, tmp_path)


def test_preempted_submitit_job_is_requeued_and_resumes_exactly(slurm_cluster: LocalSlurmCluster, job_data: Path,
                                                                reference_run: Path, tmp_path: Path) -> None:
    job = submit(slurm_cluster, job_data, tmp_path)
    wait_for(lambda: in_epoch(tmp_path, 2, 3), "iteration 3 of epoch 2", JOB_TIMEOUT_S,
             alive=lambda: running(slurm_cluster, job))
    slurm_cluster.command("scontrol", "requeue", job)
    info = finish(slurm_cluster, job, tmp_path)
    assert info["Restarts"] == "1"
    assert "stopped by SIGTERM" in (tmp_path / "stdout.log").read_text()
    [(epoch, iteration)] = resumed_iterations(tmp_path)
    assert epoch == 2 and 3 <= iteration < ITERS_PER_EPOCH
    assert_same_run(reference_run, tmp_path)


def test_submitit_job_at_its_time_limit_requeues_itself_and_finishes(slurm_cluster: LocalSlurmCluster,
                                                                     job_data: Path, reference_run: Path,
                                                                     tmp_path: Path) -> None:
    """submitit asks SLURM for USR2 120 s before the time limit; as in test_sbatch.py the running job's limit is cut
    in the middle of epoch 2 and its tasks are held until the warning is pending in them. RunNetJob hands the warning
    to the trainer (save at the next step), then to submitit, which calls RunNetJob.checkpoint and requeues the job."""
    job = submit(slurm_cluster, job_data, tmp_path)
    wait_for(lambda: in_epoch(tmp_path, 2, 3), "iteration 3 of epoch 2", JOB_TIMEOUT_S,
             alive=lambda: running(slurm_cluster, job))
    slurm_cluster.command("scancel", "--signal", "STOP", job)
    limit_min = math.ceil((slurm_cluster.run_seconds(job) + 90) / 60)
    slurm_cluster.command("scontrol", "update", f"JobId={job}", f"TimeLimit={limit_min}")
    tasks = slurm_cluster.job_processes(job, TASK_COMMAND)
    assert len(tasks) == 2, tasks
    wait_for(lambda: signal_reached(tasks, signal.SIGUSR2),
             "SLURM's time-limit warning (submitit's USR2)", 90)
    slurm_cluster.command("scancel", "--signal", "CONT", job)
    wait_for(lambda: slurm_cluster.job(job).get("Restarts", "0") != "0", "the job to requeue itself", 120)
    slurm_cluster.command("scontrol", "update", f"JobId={job}", "TimeLimit=10")
    info = finish(slurm_cluster, job, tmp_path)
    assert info["Restarts"] == "1"
    logs = submitit_logs(tmp_path, job)
    assert "this job is timed-out" in logs and "Calling checkpoint method" in logs, logs[-4000:]
    assert "stopped by SIGUSR1" in (tmp_path / "stdout.log").read_text()
    [(epoch, iteration)] = resumed_iterations(tmp_path)
    assert epoch == 2 and 3 <= iteration < ITERS_PER_EPOCH
    assert_same_run(reference_run, tmp_path)

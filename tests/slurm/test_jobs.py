"""SLURM jobs on a real (private, one-node) cluster, submitted with tools/slurm/run_net.sbatch and with
tools/submit_slurm.py (submitit): 2 CPU tasks (--gpus-per-node 0, gloo).

For each way of submitting: a job trains to the end like the same run under torchrun; a job requeued in the middle of
an epoch (preemption) and a job that meets its time limit in the middle of an epoch both save, come back, resume and
end with the weights and metrics of the uninterrupted run, bit for bit.
"""
from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster import LocalSlurmCluster
from jobs import (
    PLAYITBACK,
    REPO,
    assert_resumed_mid_epoch,
    assert_same_run,
    finish,
    job_opts,
    meet_time_limit_mid_epoch,
    wait_until_mid_epoch,
)

pytestmark = pytest.mark.slurm

# Both submit 1 node x 2 CPU tasks, 1 core each, 10 minutes.


def submit_sbatch(cluster: LocalSlurmCluster, data: Path, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    result = cluster.command(
        "sbatch", "--parsable", "--chdir", str(REPO), "--output", str(out / "slurm-%j.out"), "--nodes", "1",
        "--ntasks-per-node", "2", "--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "10",
        str(REPO / "tools" / "slurm" / "run_net.sbatch"), "--cfg", str(REPO / PLAYITBACK), *job_opts(data, out),
        env={"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    return result.stdout.strip().split(";")[0]


def sbatch_output(out: Path, job_id: str) -> str:
    return (out / f"slurm-{job_id}.out").read_text()


def submit_submitit(cluster: LocalSlurmCluster, data: Path, out: Path) -> str:
    result = cluster.command(
        sys.executable, str(REPO / "tools" / "submit_slurm.py"), "--cfg", str(REPO / PLAYITBACK), "--nodes", "1",
        "--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1", "--timeout-min", "10",
        "--logs", str(out / "submitit"), *job_opts(data, out), env={"OMP_NUM_THREADS": "1"}, cwd=REPO)
    match = re.search(r"submitted job (\d+) \(1 node\(s\) x 2 CPU process\(es\)\)", result.stdout)
    assert match, result.stdout + result.stderr
    return match.group(1)


def submitit_logs(out: Path, job_id: str) -> str:
    return "\n".join(path.read_text() for path in sorted((out / "submitit").glob(f"{job_id}_*_log.*")))


@dataclass(frozen=True)
class Submitter:
    """One way of submitting, and what its jobs show."""

    submit: Callable[[LocalSlurmCluster, Path, Path], str]  # (cluster, data, output dir) -> job id
    logs: Callable[[Path, str], str]  # (output dir, job id) -> the job's SLURM-side output
    task_command: str  # in the command line of every task
    warning: int  # the time-limit warning the tasks receive
    started: str  # in the logs of a started job ({job} = its id)
    preempted: tuple[str, ...]  # in the logs of a job requeued while running
    timed_out: tuple[str, ...]  # in the logs of a job that requeued itself at its time limit


SUBMITTERS = {
    # The template asks SLURM for USR1 120 s before the time limit to the batch shell, which forwards it to the tasks
    # and then requeues the job with scontrol.
    "sbatch": Submitter(submit_sbatch, sbatch_output, "tools/run_net.py", signal.SIGUSR1,
                        "job {job} (restart 0): 1 node(s) x 2 task(s), CPU processes (gloo)",
                        ("DUE TO JOB REQUEUE", "SIGTERM (preemption or requeue)", "job {job} (restart 1)"),
                        ("time limit near (SLURM's warning signal)", "requeueing job {job}")),
    # submitit asks for USR2 to every task; RunNetJob hands it to the trainer, then to submitit, which calls
    # RunNetJob.checkpoint and requeues the job.
    "submitit": Submitter(submit_submitit, submitit_logs, "submitit.core._submit", signal.SIGUSR2,
                          "Loading pickle", ("DUE TO JOB REQUEUE",),
                          ("this job is timed-out", "Calling checkpoint method", "Requeued job {job}")),
}


@pytest.fixture(params=list(SUBMITTERS))
def submitter(request: pytest.FixtureRequest) -> Submitter:
    return SUBMITTERS[request.param]


def assert_logged(submitter: Submitter, out: Path, job: str, *texts: str) -> None:
    logs = submitter.logs(out, job)
    for text in texts:
        assert text.format(job=job) in logs, f"{text!r} is not in the logs of job {job}:\n{logs[-4000:]}"


def test_job_trains_to_the_end_like_torchrun(submitter: Submitter, slurm_cluster: LocalSlurmCluster, job_data: Path,
                                             reference_run: Path, tmp_path: Path) -> None:
    job = submitter.submit(slurm_cluster, job_data, tmp_path)
    info = finish(slurm_cluster, job, lambda: submitter.logs(tmp_path, job))
    assert info["Restarts"] == "0"
    assert_logged(submitter, tmp_path, job, submitter.started)
    assert "2 process(es)" in (tmp_path / "stdout.log").read_text()
    assert_same_run(reference_run, tmp_path)


def test_preempted_job_is_requeued_and_resumes_exactly(submitter: Submitter, slurm_cluster: LocalSlurmCluster,
                                                       job_data: Path, reference_run: Path, tmp_path: Path) -> None:
    """`scontrol requeue` in the middle of epoch 2: SLURM sends SIGTERM to every process of the job (batch shell and
    DataLoader workers included); the tasks save at their next step, and the requeued job resumes from there."""
    job = submitter.submit(slurm_cluster, job_data, tmp_path)
    wait_until_mid_epoch(slurm_cluster, job, tmp_path, submitter.task_command)
    slurm_cluster.command("scontrol", "requeue", job)
    info = finish(slurm_cluster, job, lambda: submitter.logs(tmp_path, job))
    assert info["Restarts"] == "1"
    assert_logged(submitter, tmp_path, job, *submitter.preempted)
    assert_resumed_mid_epoch(tmp_path, "SIGTERM")
    assert_same_run(reference_run, tmp_path)


def test_job_at_its_time_limit_saves_requeues_itself_and_finishes(submitter: Submitter,
                                                                  slurm_cluster: LocalSlurmCluster, job_data: Path,
                                                                  reference_run: Path, tmp_path: Path) -> None:
    job = submitter.submit(slurm_cluster, job_data, tmp_path)
    wait_until_mid_epoch(slurm_cluster, job, tmp_path, submitter.task_command)
    meet_time_limit_mid_epoch(slurm_cluster, job, submitter.task_command, submitter.warning)
    info = finish(slurm_cluster, job, lambda: submitter.logs(tmp_path, job))
    assert info["Restarts"] == "1"
    assert_logged(submitter, tmp_path, job, *submitter.timed_out)
    assert_resumed_mid_epoch(tmp_path, "SIGUSR1")  # the trainer's stop signal, also for submitit's USR2
    assert_same_run(reference_run, tmp_path)

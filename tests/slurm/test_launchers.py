"""The launcher matrix: every way of starting a job x what a user does with it, each run to the end.

Launchers: a single process; two processes started on their own (--num_shards 2, one spawned process each, as on two
machines); torchrun with 2 processes; srun with 2 tasks on the private SLURM cluster. Scenarios: train and test in one
command (TEST.ENABLE True after training: a second process group in the same processes); test only, from a
checkpoint; a run killed (SIGKILL, every process) in the middle of epoch 2 and started again with the same command.

What must be equal is: a 2-process run's final weights and validation metrics are those of the 2-process torchrun
reference, bit for bit (same ranks, same seeds), and a single process's those of the single-process reference; the
test metrics of a checkpoint are the same whoever tests it (up to the float order of the batches).

A hang fails within a minute, naming its stage and rank: every run here has DIST_TIMEOUT_SECS 45, after which a
collective or a rendezvous that waits raises a LostProcessError ("process R of 2 stops in stage test: ...").
"""
from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from cluster import LocalSlurmCluster, free_port
from engine_utils import metrics
from jobs import (
    ITERS_PER_EPOCH,
    PLAYITBACK,
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

HANG_TIMEOUT_S = 45  # DIST_TIMEOUT_SECS of every run: what a hang costs before it fails naming stage and rank
RUN_TIMEOUT_S = 300  # a run that neither ends nor fails by then (not a collective) is stopped with its output
TEST_KEYS = ("top1_acc", "top5_acc", "mAP", "AUC", "clips")


@dataclass
class Job:
    """The processes a launcher started for one command, all in sessions of their own."""

    processes: list[subprocess.Popen]
    kill: Callable[[], None]  # SIGKILL to every process of the job

    def wait(self, what: str) -> str:
        """Wait for every process to end (each must exit 0); their output."""
        outputs = []
        for process in self.processes:
            try:
                outputs.append(process.communicate(timeout=RUN_TIMEOUT_S)[0])
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"{what} did not end within {RUN_TIMEOUT_S} s:\n"
                            f"{process.communicate(timeout=30)[0][-4000:]}")
        output = "\n".join(outputs)
        failed = [p.returncode for p in self.processes if p.returncode != 0]
        assert not failed, f"{what} failed with exit status {failed}:\n{output[-6000:]}"
        return output


def popen(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def kill_tree(roots: list[psutil.Process]) -> None:
    """SIGKILL to the processes and everything they started."""
    tree = []
    for root in roots:
        try:
            tree += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for member in tree:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def kill_sessions(processes: list[subprocess.Popen]) -> Callable[[], None]:
    """What kills a job of `processes`: their process trees (torchrun starts its workers in sessions of their own, so
    the process group does not hold them)."""
    def kill() -> None:
        kill_tree(alive(processes))
    return kill


def alive(processes: list[subprocess.Popen]) -> list[psutil.Process]:
    found = []
    for process in processes:
        try:
            found.append(psutil.Process(process.pid))
        except psutil.NoSuchProcess:
            continue
    return found


def start_single(args: list[str], request: pytest.FixtureRequest | None = None) -> Job:
    processes = [popen([sys.executable, *args], job_env())]
    return Job(processes, kill_sessions(processes))


def start_shards(args: list[str], request: pytest.FixtureRequest | None = None) -> Job:
    init = f"tcp://127.0.0.1:{free_port()}"
    script, rest = args[0], args[1:]
    processes = [popen([sys.executable, script, "--num_shards", "2", "--shard_id", str(shard), "--init_method", init,
                        *rest], job_env()) for shard in (0, 1)]
    return Job(processes, kill_sessions(processes))


def start_torchrun(args: list[str], request: pytest.FixtureRequest | None = None) -> Job:
    processes = [popen([TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()), *args], job_env())]
    return Job(processes, kill_sessions(processes))


def start_srun(args: list[str], request: pytest.FixtureRequest | None = None) -> Job:
    assert request is not None, "srun needs the slurm_cluster fixture"
    cluster: LocalSlurmCluster = request.getfixturevalue("slurm_cluster")
    name = f"matrix-{uuid.uuid4().hex[:8]}"
    env = cluster.env(job_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())))
    processes = [popen(["srun", "--job-name", name, "--nodes", "1", "--ntasks", "2", "--cpus-per-task", "1",
                        "--time", "10", "--chdir", str(REPO), sys.executable, *args], env)]

    def kill() -> None:
        # The tasks themselves (children of slurmstepd, not of srun): a killed srun would have SLURM end its tasks
        # gently (SIGTERM, on which they save), and a scancel signal may reach them in any order.
        ids = cluster.command("squeue", "--noheader", "--name", name, "--format", "%A", check=False).stdout.split()
        tasks = [task for job_id in ids for task in cluster.job_processes(job_id, "run_net.py")]
        assert ids and tasks, f"no running tasks of srun job {name} ({ids})"
        kill_tree(tasks)
        kill_tree(alive(processes))

    return Job(processes, kill)


LAUNCHERS: dict[str, tuple[Callable[[list[str], pytest.FixtureRequest | None], Job], int]] = {
    "single": (start_single, 1),
    "shards": (start_shards, 2),
    "torchrun": (start_torchrun, 2),
    "srun": (start_srun, 2),
}


def command(out: Path, data: Path, *opts: str) -> list[str]:
    return [*run_command(out, data), "DIST_TIMEOUT_SECS", str(HANG_TIMEOUT_S), *opts]


def metrics_of_test(output_dir: Path) -> dict[str, float]:
    [final] = metrics(output_dir, "test_final")
    return {key: final[key] for key in TEST_KEYS}


@pytest.fixture(scope="module")
def single_reference(job_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("single_reference")
    start_single(command(out, job_data)).wait("the single-process reference run")
    return out


@pytest.fixture(scope="module")
def reference_test(job_data: Path, reference_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """The test metrics of the 2-process reference's final checkpoint, tested by a single process."""
    out = tmp_path_factory.mktemp("reference_test")
    start_single(command(out, job_data, *only_test_opts(reference_run))).wait("the reference test")
    return metrics_of_test(out)


def only_test_opts(trained: Path) -> list[str]:
    return ["TRAIN.ENABLE", "False", "TEST.ENABLE", "True", "TEST.CHECKPOINT_FILE_PATH",
            str(trained / "checkpoints" / "checkpoint_epoch_00002.pyth")]


@pytest.fixture(params=list(LAUNCHERS))
def launcher(request: pytest.FixtureRequest) -> str:
    return request.param


def reference_of(launcher: str, request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("single_reference" if LAUNCHERS[launcher][1] == 1 else "reference_run")


def test_train_and_test_in_one_command(launcher: str, job_data: Path, tmp_path: Path,
                                       request: pytest.FixtureRequest) -> None:
    start, world = LAUNCHERS[launcher]
    output = start(command(tmp_path, job_data, "TEST.ENABLE", "True"), request).wait(f"{launcher} train+test")
    assert f"{world} process(es)" in (tmp_path / "stdout.log").read_text(), output[-3000:]
    assert_same_run(reference_of(launcher, request), tmp_path)
    tested = metrics_of_test(tmp_path)
    assert tested["clips"] == 12
    if world == 2:  # the reference's weights, so its test metrics
        assert tested == pytest.approx(request.getfixturevalue("reference_test"), abs=1e-4)


def test_test_only_from_a_checkpoint(launcher: str, job_data: Path, reference_run: Path,
                                     reference_test: dict[str, float], tmp_path: Path,
                                     request: pytest.FixtureRequest) -> None:
    start, _ = LAUNCHERS[launcher]
    start(command(tmp_path, job_data, *only_test_opts(reference_run)), request).wait(f"{launcher} test")
    assert metrics_of_test(tmp_path) == pytest.approx(reference_test, abs=1e-4)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_killed_run_resumes_with_the_same_command(launcher: str, job_data: Path, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    start, _ = LAUNCHERS[launcher]
    job = start(command(tmp_path, job_data), request)
    try:
        wait_for(lambda: in_epoch(tmp_path, 2, 3), "iteration 3 of epoch 2", RUN_TIMEOUT_S,
                 alive=lambda: all(p.poll() is None for p in job.processes))
    finally:
        job.kill()  # SIGKILL: nothing of epoch 2 is saved
    for process in job.processes:
        process.communicate(timeout=60)
    start(command(tmp_path, job_data), request).wait(f"{launcher} resumed")
    assert resumed_iterations(tmp_path) == [(1, ITERS_PER_EPOCH)]  # from the end of epoch 1
    assert_same_run(reference_of(launcher, request), tmp_path)


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_train_then_test_at_the_demo_size(launcher: str, job_data: Path, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    """The command of issue 22 at the demo config's own size, where rank 0 saves for longer than rank 1 before the
    test stage: with keys shared between the training and the test process groups, the first rank to start the test
    group read the other's stale address and the job hung (here: failed after DIST_TIMEOUT_SECS, naming the stage)."""
    start, _ = LAUNCHERS[launcher]
    args = [str(REPO / "tools" / "run_net.py"), "--cfg", str(REPO / PLAYITBACK), "NUM_GPUS", "0",
            "SOLVER.MAX_EPOCH", "1", "TEST.ENABLE", "True", "MODEL.ALLOW_RANDOM_WEIGHTS", "True",
            "VGGSOUND.AUDIO_DATA_DIR", str(job_data / "audio"), "VGGSOUND.ANNOTATIONS_DIR",
            str(job_data / "annotations"), "MODEL.NUM_CLASSES", "4", "AUDIO_DATA.CLIP_SECS", "2.0",
            "TRAIN.BATCH_SIZE", "8", "TEST.BATCH_SIZE", "8", "DATA_LOADER.NUM_WORKERS", "1",
            "DIST_TIMEOUT_SECS", str(HANG_TIMEOUT_S), "OUTPUT_DIR", str(tmp_path)]
    start(args, request).wait(f"{launcher} train+test at the demo size")
    assert metrics_of_test(tmp_path)["clips"] == 12


STAGES_JOB = str(Path(__file__).resolve().parent / "stages_job.py")


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_each_process_group_gets_store_keys_of_its_own(launcher: str, request: pytest.FixtureRequest) -> None:
    """Two launch_job calls in the same launcher-started processes, rank 0 reaching the second 3 s after rank 1
    (stages_job.py). With keys shared between the two groups, rank 1 read rank 0's address of the first group and
    waited until DIST_TIMEOUT_SECS (issue 22: train then test in one command hung under torchrun; tools/run_net.py
    now runs both stages in one group, and any later group still gets keys of its own)."""
    start, _ = LAUNCHERS[launcher]
    output = start([STAGES_JOB, "NUM_GPUS", "0", "DIST_TIMEOUT_SECS", "20"], request).wait(f"{launcher} stages")
    assert "second stage: sum 3 over 2 process(es)" in output, output[-3000:]

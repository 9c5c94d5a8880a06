"""SLURM launch without SLURM: faked SLURM_* variables, fake srun/scontrol executables, a fake submitit.

Covers the ranks `launcher_process_info` derives under srun, the rendezvous of tools/submit_slurm.py and of the sbatch
template, the requeue decision, the routing of the time-limit signal to the trainer's StopRequest, and submitit's
checkpoint hook.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from playitback.config import load_config
from playitback.engine.loop import StopRequest
from playitback.utils.distributed import ProcessInfo, launcher_process_info

REPO = Path(__file__).resolve().parents[1]

import run_net  # noqa: E402
import submit_slurm  # noqa: E402

DEMO_CFG = str(REPO / "configs" / "Demo" / "PlayItBackX2.yaml")
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in LAUNCHER_VARS + ("MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_NODELIST", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_ranks_from_srun_variables(clean_env: pytest.MonkeyPatch) -> None:
    assert launcher_process_info() is None
    clean_env.setenv("SLURM_PROCID", "13")
    clean_env.setenv("SLURM_NTASKS", "16")
    clean_env.setenv("SLURM_LOCALID", "5")
    assert launcher_process_info() == ProcessInfo(rank=13, world=16, local_rank=5)
    clean_env.setenv("SLURM_NTASKS", "1")  # a one-task job is a plain single process
    assert launcher_process_info() is None
    clean_env.setenv("RANK", "2")
    clean_env.setenv("WORLD_SIZE", "4")
    assert launcher_process_info() == ProcessInfo(rank=2, world=4, local_rank=0)  # torchrun inside an allocation


@pytest.mark.parametrize(("nodelist", "first"), [
    ("node07", "node07"),
    ("gpu[003-005,010],cpu1", "gpu003"),
    ("a1,b[2-3]", "a1"),
    ("rack[2-3]-n[01-04]", "rack2-n01"),
    ("x[9]", "x9"),
])
def test_first_node_of_a_nodelist(nodelist: str, first: str) -> None:
    assert submit_slurm.first_node(nodelist) == first


def test_rendezvous_env(clean_env: pytest.MonkeyPatch) -> None:
    env = {"SLURM_JOB_NODELIST": "gpu[12-13]", "SLURM_JOB_ID": "4242"}
    assert submit_slurm.rendezvous_env(env) == {"MASTER_ADDR": "gpu12", "MASTER_PORT": str(20000 + 4242)}
    assert submit_slurm.rendezvous_env({**env, "MASTER_ADDR": "head"})["MASTER_ADDR"] == "head"
    with pytest.raises(KeyError, match="SLURM_JOB_NODELIST is not set"):
        submit_slurm.rendezvous_env({})


def test_command_and_parameters_for_n_nodes_by_g_gpus(clean_env: pytest.MonkeyPatch) -> None:
    argv = submit_slurm.run_net_argv(DEMO_CFG, ["OUTPUT_DIR", "runs/x"], gpus_per_node=4, nodes=2)
    args = run_net.parse_args(argv)
    assert (args.cfg_file, args.num_shards, args.opts) == (DEMO_CFG, 2, ["OUTPUT_DIR", "runs/x", "NUM_GPUS", "4"])
    clean_env.setenv("SLURM_PROCID", "7")
    clean_env.setenv("SLURM_NTASKS", "8")
    cfg = load_config(args.cfg_file, args.opts, num_shards=args.num_shards)
    assert (cfg.NUM_GPUS, cfg.NUM_SHARDS) == (4, 2)

    params = submit_slurm.slurm_parameters(2, 4, 8, 60, "pib", partition="gpu")
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert params["slurm_signal_delay_s"] == 120 and params["slurm_additional_parameters"]["requeue"] is True
    assert params["slurm_partition"] == "gpu"
    cpu = submit_slurm.slurm_parameters(1, 0, 1, 60, "pib", tasks=2, signal_delay_s=30)
    assert (cpu["tasks_per_node"], cpu["gpus_per_node"], cpu["slurm_signal_delay_s"]) == (2, 0, 30)
    assert submit_slurm.slurm_parameters(1, 0, 1, 60, "pib")["tasks_per_node"] == 1
    with pytest.raises(ValueError, match="--gpus-per-node must be >= 0"):
        submit_slurm.slurm_parameters(1, -1, 8, 60, "pib")
    with pytest.raises(ValueError, match=r"--tasks-per-node \(2\) must equal --gpus-per-node \(4\): one task per GPU"):
        submit_slurm.slurm_parameters(1, 4, 8, 60, "pib", tasks=2)
    with pytest.raises(ValueError, match="--signal-delay-s .* must be shorter than the time limit"):
        submit_slurm.slurm_parameters(1, 0, 1, 1, "pib", signal_delay_s=60)


def test_dry_run_validates_the_config(capsys: pytest.CaptureFixture, clean_env: pytest.MonkeyPatch) -> None:
    assert submit_slurm.main(["--cfg", DEMO_CFG, "--nodes", "2", "--gpus-per-node", "4", "--dry-run"]) == 0
    assert "--num_shards 2" in capsys.readouterr().out
    # 2 x 3 = 6 processes cannot split the demo's batch of 32.
    assert submit_slurm.main(["--cfg", DEMO_CFG, "--nodes", "2", "--gpus-per-node", "3", "--dry-run"]) == 2
    assert "TRAIN.BATCH_SIZE (32) must be a positive multiple of the number of processes (6)" in capsys.readouterr().err
    # CPU processes: the world is nodes x --tasks-per-node, not NUM_GPUS.
    assert submit_slurm.main(["--cfg", DEMO_CFG, "--gpus-per-node", "0", "--tasks-per-node", "3", "--dry-run"]) == 2
    assert "must be a positive multiple of the number of processes (3)" in capsys.readouterr().err
    assert submit_slurm.main(["--cfg", DEMO_CFG, "--gpus-per-node", "0", "--tasks-per-node", "4", "--dry-run"]) == 0
    assert "each of the 4 tasks" in capsys.readouterr().out


@pytest.mark.parametrize(("result", "warned", "expected"), [
    ({"stopped": True, "epoch": 3, "iteration": 10}, True, True),
    ({"stopped": True, "epoch": 3, "iteration": 10}, False, False),  # SIGTERM: SLURM requeues a preempted job
    ({"top1_acc": 50.0}, True, False),  # finished as the warning came: nothing left to do
    (None, True, False),
])
def test_requeue_decision(result: object, warned: bool, expected: bool) -> None:
    assert submit_slurm.should_requeue(result, warned) is expected


@pytest.fixture
def submitit_usr2(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A stand-in for submitit's USR2 handler (checkpoint and requeue); records the signals it received."""
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, _frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGUSR2, previous)


def test_time_limit_signal_reaches_the_trainer_then_submitit(submitit_usr2: list[int]) -> None:
    job = submit_slurm.RunNetJob(DEMO_CFG, [], gpus_per_node=1, nodes=1)
    job.install_time_limit_handler()
    stop = StopRequest()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested and stop.signal_name == "SIGUSR1"
        assert job.time_limit_warned and submitit_usr2 == []
    finally:
        stop.restore()
    job.requeue()
    assert submitit_usr2 == [signal.SIGUSR2]


def test_time_limit_outside_training_goes_straight_to_submitit(submitit_usr2: list[int]) -> None:
    job = submit_slurm.RunNetJob(DEMO_CFG, [], gpus_per_node=1, nodes=1)
    job.install_time_limit_handler()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert submitit_usr2 == [signal.SIGUSR2] and not job.time_limit_warned


def test_job_stopped_by_the_time_limit_requeues_and_skips_the_test(
        submitit_usr2: list[int], clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import playitback.engine.trainer as trainer

    clean_env.setattr(os, "environ", {**os.environ, "SLURM_JOB_NODELIST": "n[4-5]", "SLURM_JOB_ID": "77"})
    ran: list[str] = []

    def fake_train(cfg):
        ran.append("train")
        stop = StopRequest()
        stop.install()
        try:
            os.kill(os.getpid(), signal.SIGUSR2)  # SLURM's warning arrives during training
            assert stop.requested
            return {"stopped": True, "epoch": 0, "iteration": 1}
        finally:
            stop.restore()

    clean_env.setattr(trainer, "train", fake_train)
    clean_env.setattr(trainer, "test", lambda cfg: ran.append("test"))
    job = submit_slurm.RunNetJob(DEMO_CFG, ["OUTPUT_DIR", str(tmp_path), "TEST.ENABLE", "True"], gpus_per_node=0,
                                 nodes=1)
    assert job() == {"stopped": True, "epoch": 0, "iteration": 1}
    assert ran == ["train"] and submitit_usr2 == [signal.SIGUSR2]
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("n4", "20077")


def test_checkpoint_resubmits_the_same_command(monkeypatch: pytest.MonkeyPatch) -> None:
    class DelayedSubmission:
        def __init__(self, function, *args, **kwargs):
            self.function, self.args, self.kwargs = function, args, kwargs

    fake = types.ModuleType("submitit")
    fake.helpers = types.SimpleNamespace(DelayedSubmission=DelayedSubmission)
    monkeypatch.setitem(sys.modules, "submitit", fake)
    job = submit_slurm.RunNetJob(DEMO_CFG, ["OUTPUT_DIR", "runs/x"], gpus_per_node=8, nodes=2)
    job.time_limit_warned = True
    resubmission = job.checkpoint()
    again = resubmission.function
    assert isinstance(again, submit_slurm.RunNetJob) and again is not job
    assert (again.cfg_file, again.opts, again.gpus_per_node, again.nodes) == (DEMO_CFG, ["OUTPUT_DIR", "runs/x"], 8, 2)
    assert not again.time_limit_warned


def test_missing_submitit_is_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(SystemExit, match="needs submitit, an optional dependency: pip install submitit"):
        submit_slurm.import_submitit()


def _write_stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


@pytest.mark.parametrize(("warn", "gpus", "num_gpus"), [(True, {"SLURM_GPUS_ON_NODE": "4"}, "4"),
                                                        (False, {"SLURM_GPUS_PER_NODE": "a100:4"}, "4"),
                                                        (False, {"SLURM_GPUS_PER_NODE": "0"}, "0"),
                                                        (True, {}, "0")])
def test_sbatch_template_with_fake_slurm(tmp_path: Path, warn: bool, gpus: dict[str, str], num_gpus: str) -> None:
    """The template's command line (NUM_GPUS from the job's GPUs: one task per GPU, or CPU processes without GPUs),
    rendezvous, and requeue after the time-limit warning."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    _write_stub(stubs / "srun", 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    _write_stub(stubs / "scontrol", f'''case "$1" in
  show) echo gpu07; echo gpu08 ;;
  requeue) echo "$2" > {tmp_path}/requeued ;;
esac
''')
    # The fake task records its command line and rendezvous, and "saves a checkpoint" when USR1 arrives.
    _write_stub(stubs / "fakepython", f'''echo "$* $MASTER_ADDR:$MASTER_PORT" > {tmp_path}/task.partial
mv {tmp_path}/task.partial {tmp_path}/task
trap 'echo saved > {tmp_path}/saved; exit 0' USR1
for _ in $(seq 300); do sleep 0.1; done
''' if warn else f'echo "$* $MASTER_ADDR:$MASTER_PORT" > {tmp_path}/task\n')
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "PYTHON": str(stubs / "fakepython"),
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_NTASKS_PER_NODE": "4", **gpus}
    for var in ("MASTER_ADDR", "MASTER_PORT", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        if var not in gpus:
            env.pop(var, None)
    script = REPO / "tools" / "slurm" / "run_net.sbatch"
    proc = subprocess.Popen(["bash", str(script), "--cfg", "c.yaml", "OUTPUT_DIR", "runs/x"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if warn:
        deadline = time.monotonic() + 20
        while not (tmp_path / "task").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    task = (tmp_path / "task").read_text().split()
    assert task == ["tools/run_net.py", "--num_shards", "2", "--cfg", "c.yaml", "OUTPUT_DIR", "runs/x", "NUM_GPUS",
                    num_gpus, "gpu07:20123"]
    assert (tmp_path / "saved").exists() is warn
    assert ((tmp_path / "requeued").read_text().strip() if warn else not (tmp_path / "requeued").exists()) in (
        "123", True)


def test_sbatch_template_wants_one_task_per_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "SLURM_JOB_NODELIST": "gpu07", "SLURM_JOB_ID": "5", "SLURM_NTASKS_PER_NODE": "2",
           "SLURM_GPUS_ON_NODE": "8"}
    result = subprocess.run(["bash", str(REPO / "tools" / "slurm" / "run_net.sbatch"), "--cfg", "c.yaml"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "one task per GPU: --ntasks-per-node (2) must equal the GPUs per node (8)" in result.stderr

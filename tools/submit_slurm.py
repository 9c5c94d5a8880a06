#!/usr/bin/env python
"""Submit tools/run_net.py to a SLURM cluster with submitit: N nodes x G GPUs, one task per GPU, requeued when the
time limit comes (and on preemption) and resumed from the last checkpoint.

How a restart works: SLURM warns the job 120 s before its time limit (submitit asks for ``--signal=USR2@120``). The
warning is handed to the trainer as SIGUSR1, so it saves a checkpoint at its next step and returns; the job then
requeues itself through submitit's checkpoint mechanism with the unchanged command, and the restarted run
auto-resumes from the newest valid checkpoint of OUTPUT_DIR. On preemption SLURM sends SIGTERM, the trainer saves the
same way, and ``--requeue`` lets SLURM put the job back in the queue.

submitit is optional: ``pip install submitit`` (or ``pip install -e .[slurm]``). Without it, use the sbatch template
tools/slurm/run_net.sbatch.

Example:
    python tools/submit_slurm.py --cfg configs/VGG-Sound/PlayItBackX2.yaml --nodes 2 --gpus-per-node 8 \\
        --partition gpu --timeout-min 1440 --logs runs/x2/slurm \\
        VGGSOUND.AUDIO_DATA_DIR /data/vggsound VGGSOUND.ANNOTATIONS_DIR data/VGG-Sound OUTPUT_DIR runs/x2
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playitback.config import ConfigError, load_config  # noqa: E402

RUN_NET = Path(__file__).resolve().parent / "run_net.py"
SIGNAL_DELAY_S = 120
PORT_BASE, PORT_SPAN = 20000, 20000


def import_submitit() -> ModuleType:
    """The submitit module, or a SystemExit naming the install command when it is missing."""
    try:
        import submitit
    except ImportError as err:
        raise SystemExit(
            "tools/submit_slurm.py needs submitit, an optional dependency: pip install submitit "
            "(or pip install -e .[slurm]); without it, submit tools/slurm/run_net.sbatch with sbatch"
        ) from err
    return submitit


def first_node(nodelist: str) -> str:
    """The first host of a SLURM node list, as ``scontrol show hostnames`` would print it first.

    Examples: ``"gpu[003-005,010],cpu1"`` -> ``"gpu003"``; ``"rack[2-3]-n[01-04]"`` -> ``"rack2-n01"``.

    Raises:
        ValueError: For an empty list.
    """
    depth, end = 0, len(nodelist)
    for index, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = index
            break
    first = nodelist[:end].strip()
    if not first:
        raise ValueError(f"SLURM node list {nodelist!r} names no host")
    return re.sub(r"\[([^\]]+)\]", lambda match: match.group(1).split(",")[0].split("-")[0], first)


def master_port(job_id: str | int) -> int:
    """A rendezvous port derived from the job id, so two jobs sharing a node do not collide."""
    return PORT_BASE + int(job_id) % PORT_SPAN


def rendezvous_env(env: Mapping[str, str]) -> dict[str, str]:
    """MASTER_ADDR (first node of SLURM_JOB_NODELIST) and MASTER_PORT for a job's environment, keeping values the
    user already exported.

    Raises:
        KeyError: SLURM_JOB_NODELIST or SLURM_JOB_ID is missing (not inside a SLURM job).
    """
    for key in ("SLURM_JOB_NODELIST", "SLURM_JOB_ID"):
        if key not in env:
            raise KeyError(f"{key} is not set: rendezvous_env must run inside a SLURM job (srun / sbatch)")
    return {
        "MASTER_ADDR": env.get("MASTER_ADDR", first_node(env["SLURM_JOB_NODELIST"])),
        "MASTER_PORT": env.get("MASTER_PORT", str(master_port(env["SLURM_JOB_ID"]))),
    }


def task_opts(opts: Sequence[str], gpus_per_node: int) -> list[str]:
    """The user's KEY VALUE overrides with NUM_GPUS set to the GPUs of a node (one task per GPU)."""
    return [*opts, "NUM_GPUS", str(gpus_per_node)]


def run_net_argv(cfg_file: str, opts: Sequence[str], gpus_per_node: int, nodes: int) -> list[str]:
    """Arguments of tools/run_net.py for one task of an N x G job (GPU count and shard count made explicit)."""
    return ["--cfg", cfg_file, "--num_shards", str(nodes), *task_opts(opts, gpus_per_node)]


def slurm_parameters(nodes: int, gpus_per_node: int, cpus_per_task: int, timeout_min: int, job_name: str,
                     partition: str | None = None, mem_gb: int | None = None,
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """submitit executor parameters: one task per GPU on every node, the 120 s time-limit warning, and requeue.

    Raises:
        ValueError: For a non-positive node, GPU, CPU or time count.
    """
    for name, value in (("nodes", nodes), ("gpus_per_node", gpus_per_node), ("cpus_per_task", cpus_per_task),
                        ("timeout_min", timeout_min)):
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    params: dict[str, Any] = {
        "name": job_name,
        "nodes": nodes,
        "tasks_per_node": gpus_per_node,
        "gpus_per_node": gpus_per_node,
        "cpus_per_task": cpus_per_task,
        "timeout_min": timeout_min,
        "slurm_signal_delay_s": SIGNAL_DELAY_S,
        "slurm_additional_parameters": {"requeue": True, **(extra or {})},
    }
    if partition:
        params["slurm_partition"] = partition
    if mem_gb:
        params["mem_gb"] = mem_gb
    return params


def should_requeue(train_result: Any, time_limit_warned: bool) -> bool:
    """Whether the job must requeue itself after training returned.

    Only a run the trainer stopped early (it returns ``{"stopped": True, ...}``) after the time-limit warning is
    requeued by the job; a preempted run (SIGTERM) is requeued by SLURM itself, and a finished run is done.
    """
    return isinstance(train_result, Mapping) and bool(train_result.get("stopped")) and time_limit_warned


class RunNetJob:
    """What every submitit task runs: load the config, train, test; requeue itself when the time limit nears.

    Args:
        cfg_file: YAML config.
        opts: KEY VALUE overrides (OUTPUT_DIR must be on a filesystem every node shares, for the checkpoints).
        gpus_per_node, nodes: the job's shape.
    """

    def __init__(self, cfg_file: str, opts: Sequence[str], gpus_per_node: int, nodes: int) -> None:
        self.cfg_file = cfg_file
        self.opts = list(opts)
        self.gpus_per_node = gpus_per_node
        self.nodes = nodes
        self.time_limit_warned = False
        self._submitit_handler: Any = signal.SIG_DFL

    def _on_time_limit(self, signum: int, frame: FrameType | None) -> None:
        # While the trainer runs it owns SIGUSR1 (save at the next step and return); hand it the warning. Outside
        # training there is no state to save, so submitit's own handler checkpoints and requeues at once.
        trainer_handler = signal.getsignal(signal.SIGUSR1)
        if callable(trainer_handler):
            self.time_limit_warned = True
            trainer_handler(signal.SIGUSR1, frame)
        elif callable(self._submitit_handler):
            self._submitit_handler(signum, frame)

    def install_time_limit_handler(self) -> None:
        """Route submitit's time-limit signal (SIGUSR2) to the trainer; submitit's handler is kept for later."""
        self._submitit_handler = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, self._on_time_limit)

    def requeue(self) -> None:
        """Hand the time-limit signal back to submitit: it calls :meth:`checkpoint` and requeues the job."""
        signal.signal(signal.SIGUSR2, self._submitit_handler)
        signal.raise_signal(signal.SIGUSR2)

    def __call__(self) -> Any:
        from playitback.engine.trainer import test, train
        from playitback.utils.distributed import launch_job

        os.environ.update(rendezvous_env(os.environ))
        cfg = load_config(self.cfg_file, task_opts(self.opts, self.gpus_per_node), num_shards=self.nodes)
        self.install_time_limit_handler()
        result = launch_job(cfg, "env://", train) if cfg.TRAIN.ENABLE else None
        if should_requeue(result, self.time_limit_warned):
            self.requeue()
            return result
        if cfg.TEST.ENABLE and not (isinstance(result, Mapping) and result.get("stopped")):
            result = launch_job(cfg, "env://", test)
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue hook: the same command again (the trainer auto-resumes from OUTPUT_DIR)."""
        submitit = import_submitit()
        return submitit.helpers.DelayedSubmission(
            RunNetJob(self.cfg_file, self.opts, self.gpus_per_node, self.nodes), *args, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="YAML config")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per task (per GPU)")
    parser.add_argument("--timeout-min", type=int, default=72 * 60)
    parser.add_argument("--partition", default=None)
    parser.add_argument("--mem-gb", type=int, default=None)
    parser.add_argument("--job-name", default="playitback")
    parser.add_argument("--logs", default="slurm_logs", help="folder for submitit's logs and pickles")
    parser.add_argument("--dry-run", action="store_true", help="print the parameters and command, submit nothing")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    try:
        params = slurm_parameters(args.nodes, args.gpus_per_node, args.cpus_per_task, args.timeout_min,
                                  args.job_name, args.partition, args.mem_gb)
        # Fail on the login node, not after queueing: NUM_GPUS x NUM_SHARDS is the job's world size here.
        load_config(args.cfg, task_opts(args.opts, args.gpus_per_node), num_shards=args.nodes)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = ["python", str(RUN_NET), *run_net_argv(args.cfg, args.opts, args.gpus_per_node, args.nodes)]
    if args.dry_run:
        print(f"submitit parameters: {params}")
        print(f"each of the {args.nodes * args.gpus_per_node} tasks runs the equivalent of: {' '.join(command)}")
        return 0
    submitit = import_submitit()
    executor = submitit.AutoExecutor(folder=args.logs)
    executor.update_parameters(**params)
    job = executor.submit(RunNetJob(args.cfg, args.opts, args.gpus_per_node, args.nodes))
    print(f"submitted job {job.job_id} ({args.nodes} node(s) x {args.gpus_per_node} GPU(s)); logs in {args.logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

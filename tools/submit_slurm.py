#!/usr/bin/env python
"""Submit tools/run_net.py to a SLURM cluster with submitit: N nodes x G GPUs, one task per GPU, requeued when the
time limit comes (and on preemption) and resumed from the last checkpoint.

How a restart works: SLURM warns the job 120 s before its time limit (submitit asks for ``--signal=USR2@120``;
``--signal-delay-s`` changes it). The warning is handed to the trainer as SIGUSR1, so it saves a checkpoint at its
next step and returns; the job then requeues itself through submitit's checkpoint mechanism with the unchanged
command (at most ``--max-num-timeout`` times), and the restarted run auto-resumes from the newest valid checkpoint of
OUTPUT_DIR. On preemption SLURM sends SIGTERM, the trainer saves the same way, and ``--requeue`` lets SLURM put the
job back in the queue.

``--gpus-per-node 0`` runs ``--tasks-per-node`` CPU processes per node (gloo backend, NUM_GPUS 0) instead of one task
per GPU: a CPU-only cluster, or the local test cluster of tests/slurm/.

submitit is optional: ``pip install submitit`` (or ``pip install -e .[slurm]``). Without it, use the sbatch template
tools/slurm/run_net.sbatch.

Examples:
    python tools/submit_slurm.py --cfg configs/VGG-Sound/PlayItBackX2.yaml --nodes 2 --gpus-per-node 8 \\
        --partition gpu --timeout-min 1440 --logs runs/x2/slurm \\
        VGGSOUND.AUDIO_DATA_DIR /data/vggsound VGGSOUND.ANNOTATIONS_DIR data/VGG-Sound OUTPUT_DIR runs/x2
    python tools/submit_slurm.py --cfg configs/Demo/PlayItBackX2.yaml --gpus-per-node 0 --tasks-per-node 2 \\
        --cpus-per-task 1 --timeout-min 60 --logs runs/demo/slurm OUTPUT_DIR runs/demo
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
from unittest import mock

from playitback.config import ConfigError, load_config

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
    """The user's KEY VALUE overrides with NUM_GPUS set to the GPUs of a node (one task per GPU; 0: CPU processes)."""
    return [*opts, "NUM_GPUS", str(gpus_per_node)]


def tasks_per_node(gpus_per_node: int, requested: int | None) -> int:
    """Tasks on each node: one per GPU, or `requested` CPU processes when the job has no GPU (default 1).

    Raises:
        ValueError: For a task count that is not one per GPU, or below 1.
    """
    if gpus_per_node > 0:
        if requested not in (None, gpus_per_node):
            raise ValueError(f"--tasks-per-node ({requested}) must equal --gpus-per-node ({gpus_per_node}): one task "
                             "per GPU (pass --gpus-per-node 0 for CPU processes)")
        return gpus_per_node
    tasks = 1 if requested is None else requested
    if tasks < 1:
        raise ValueError(f"--tasks-per-node must be >= 1, got {tasks}")
    return tasks


def job_config(cfg_file: str, opts: Sequence[str], gpus_per_node: int, nodes: int, tasks: int) -> Any:
    """The config as every task of the job will load it, with the job's world size (nodes x tasks): checked on the
    login node, before anything is queued.

    Raises:
        ConfigError: As load_config.
    """
    as_a_task = {"SLURM_PROCID": "0", "SLURM_NTASKS": str(nodes * tasks)}
    with mock.patch.dict(os.environ, as_a_task):
        os.environ.pop("WORLD_SIZE", None)  # a launcher's variable of this shell is not the job's
        return load_config(cfg_file, task_opts(opts, gpus_per_node), num_shards=nodes)


def run_net_argv(cfg_file: str, opts: Sequence[str], gpus_per_node: int, nodes: int) -> list[str]:
    """Arguments of tools/run_net.py for one task of an N x G job (GPU count and shard count made explicit)."""
    return ["--cfg", cfg_file, "--num_shards", str(nodes), *task_opts(opts, gpus_per_node)]


def slurm_parameters(nodes: int, gpus_per_node: int, cpus_per_task: int, timeout_min: int, job_name: str,
                     partition: str | None = None, mem_gb: int | None = None, tasks: int | None = None,
                     signal_delay_s: int = SIGNAL_DELAY_S, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """submitit executor parameters: one task per GPU on every node (or `tasks` CPU processes with no GPU), the
    time-limit warning `signal_delay_s` before the end, and requeue.

    Raises:
        ValueError: For a non-positive node, CPU, time or task count, or a negative GPU count.
    """
    for name, value in (("nodes", nodes), ("cpus_per_task", cpus_per_task), ("timeout_min", timeout_min),
                        ("signal_delay_s", signal_delay_s)):
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if gpus_per_node < 0:
        raise ValueError(f"--gpus-per-node must be >= 0 (0: CPU processes), got {gpus_per_node}")
    if signal_delay_s >= timeout_min * 60:
        raise ValueError(f"--signal-delay-s ({signal_delay_s}) must be shorter than the time limit "
                         f"({timeout_min * 60} s)")
    params: dict[str, Any] = {
        "name": job_name,
        "nodes": nodes,
        "tasks_per_node": tasks_per_node(gpus_per_node, tasks),
        "gpus_per_node": gpus_per_node,
        "cpus_per_task": cpus_per_task,
        "timeout_min": timeout_min,
        "slurm_signal_delay_s": signal_delay_s,
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
        from playitback.engine.trainer import train_and_test
        from playitback.utils.distributed import launch_job

        os.environ.update(rendezvous_env(os.environ))
        cfg = load_config(self.cfg_file, task_opts(self.opts, self.gpus_per_node), num_shards=self.nodes)
        self.install_time_limit_handler()
        result = launch_job(cfg, "env://", train_and_test)
        if should_requeue(result, self.time_limit_warned):
            self.requeue()
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
    parser.add_argument("--gpus-per-node", type=int, default=8, help="one task per GPU; 0 runs CPU processes")
    parser.add_argument("--tasks-per-node", type=int, default=None,
                        help="CPU processes per node with --gpus-per-node 0 (default 1); else the GPU count")
    parser.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per task (per GPU)")
    parser.add_argument("--timeout-min", type=int, default=72 * 60)
    parser.add_argument("--signal-delay-s", type=int, default=SIGNAL_DELAY_S,
                        help="seconds before the time limit at which the job saves and requeues itself")
    parser.add_argument("--max-num-timeout", type=int, default=3,
                        help="how many times the job may requeue itself at its time limit")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--mem-gb", type=int, default=None)
    parser.add_argument("--job-name", default="playitback")
    parser.add_argument("--logs", default="slurm_logs", help="folder for submitit's logs and pickles")
    parser.add_argument("--dry-run", action="store_true", help="print the parameters and command, submit nothing")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    try:
        params = slurm_parameters(args.nodes, args.gpus_per_node, args.cpus_per_task, args.timeout_min,
                                  args.job_name, args.partition, args.mem_gb, tasks=args.tasks_per_node,
                                  signal_delay_s=args.signal_delay_s)
        # Fail on the login node, not after queueing.
        job_config(args.cfg, args.opts, args.gpus_per_node, args.nodes, params["tasks_per_node"])
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    command = ["python", str(RUN_NET), *run_net_argv(args.cfg, args.opts, args.gpus_per_node, args.nodes)]
    num_tasks = args.nodes * params["tasks_per_node"]
    if args.dry_run:
        print(f"submitit parameters: {params}")
        print(f"each of the {num_tasks} tasks runs the equivalent of: {' '.join(command)}")
        return 0
    submitit = import_submitit()
    # cluster="slurm": without SLURM this fails instead of quietly training on the login node.
    executor = submitit.AutoExecutor(folder=args.logs, cluster="slurm", slurm_max_num_timeout=args.max_num_timeout)
    executor.update_parameters(**params)
    job = executor.submit(RunNetJob(args.cfg, args.opts, args.gpus_per_node, args.nodes))
    devices = f"{args.gpus_per_node} GPU(s)" if args.gpus_per_node else f"{params['tasks_per_node']} CPU process(es)"
    print(f"submitted job {job.job_id} ({args.nodes} node(s) x {devices}); logs in {args.logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

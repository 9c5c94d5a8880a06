"""Process launch and collectives.

Three ways to start a job, one code path after start-up:
  * torchrun / srun with several tasks: the launcher started every process; rank and world come from its environment
    variables;
  * without a launcher (an srun of one task counts as none), a job of more than one process: max(NUM_GPUS, 1)
    processes are spawned here on each of NUM_SHARDS machines (PySlowFast habit), ranks SHARD_ID * per-machine +
    local rank, rendezvous at `--init_method`;
  * otherwise a single process without a process group.
:func:`job_layout` is the one rule for all three: the config is validated against the world it gives and the launch
starts exactly that. NCCL is used on GPUs and gloo on the CPU (NUM_GPUS 0).
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from playitback.utils.errors import USER_ERROR_EXIT, ReportedUserError, UserError, debugging

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands in the job."""

    rank: int
    world: int
    local_rank: int


def launcher_process_info() -> ProcessInfo | None:
    """Rank, world and local rank set by torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or srun (SLURM_PROCID/SLURM_NTASKS/
    SLURM_LOCALID), or None when no launcher started this process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return ProcessInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        return ProcessInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return None


@dataclass(frozen=True)
class JobLayout:
    """How many processes a job has and who starts them."""

    world: int  # processes in the whole job
    per_machine: int  # processes this command starts on its machine when no launcher started it
    launched: bool  # started by torchrun or srun (ranks from the environment)


def job_layout(num_gpus: int, num_shards: int) -> JobLayout:
    """The processes a job of NUM_GPUS and NUM_SHARDS runs in this environment (see the module docstring)."""
    info = launcher_process_info()
    if info is not None:
        return JobLayout(info.world, 1, True)
    per_machine = max(num_gpus, 1)
    return JobLayout(per_machine * num_shards, per_machine, False)


def gpu_errors(num_gpus: int) -> list[str]:
    """Why this machine cannot run a job of NUM_GPUS (empty when it can): the GPUs the processes started here need
    must be visible. Checked before any process starts, so the message names the fix instead of a CUDA error."""
    if num_gpus <= 0:
        return []
    info = launcher_process_info()
    needed = info.local_rank + 1 if info is not None else num_gpus
    visible = torch.cuda.device_count()
    if visible >= needed:
        return []
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"CUDA_VISIBLE_DEVICES={devices!r}" if devices is not None else "CUDA_VISIBLE_DEVICES is not set"
    if info is not None:
        return [f"local rank {info.local_rank} needs GPU {info.local_rank}, but this machine has {visible} visible "
                f"GPU(s) ({seen}); start at most {visible} process(es) per machine, or pass NUM_GPUS 0 for the CPU"]
    fix = f"NUM_GPUS {visible} (one process per GPU) or NUM_GPUS 0 for the CPU" if visible else "NUM_GPUS 0 for the CPU"
    return [f"NUM_GPUS is {num_gpus} but this machine has {visible} visible GPU(s) ({seen}); pass {fix}"]


# The store every process group of this process rendezvouses through, made once: (init_method, rank, world) -> store.
_process_stores: dict[tuple[str, int, int], dist.Store] = {}
# Process groups this process has started; every process of a job starts its groups in the same order (one per stage
# of tools/run_net.py), so the count names the same group in all of them.
_groups_started = 0


def _process_store(init_method: str, info: ProcessInfo, timeout: timedelta) -> dist.Store:
    """The rendezvous store at `init_method` (env://, tcp://host:port or file://), made on the first call of this
    process and kept for its lifetime: under torchrun a client of the agent's TCPStore, elsewhere rank 0 serves it."""
    key = (init_method, info.rank, info.world)
    if key not in _process_stores:
        store, _, _ = next(dist.rendezvous(init_method, info.rank, info.world, timeout=timeout))
        store.set_timeout(timeout)
        _process_stores[key] = store
    return _process_stores[key]


def _group_store(init_method: str, info: ProcessInfo, timeout: timedelta) -> dist.Store:
    """A view of the process store with keys of the next process group's own.

    torch names every default group "0" (its counter restarts when a group is destroyed), so two groups sharing a
    store share their keys: the test stage's group of `run_net.py` would read the addresses the training group
    published (gloo pairs, NCCL ids), connect to ports nobody listens on and hang until DIST_TIMEOUT_SECS. The store
    outlives a group (one per process, and under torchrun the agent's store outlives the processes of every restart
    attempt), so the prefix names both the restart attempt (TORCHELASTIC_RESTART_COUNT, the same in every worker of
    an attempt) and this process's count of groups started.
    """
    global _groups_started
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefix = f"playitback/attempt_{attempt}/group_{_groups_started}"
    _groups_started += 1
    return dist.PrefixStore(prefix, _process_store(init_method, info, timeout))


def _init_process_group(info: ProcessInfo, use_gpu: bool, backend: str, init_method: str, timeout_s: float) -> None:
    if use_gpu:
        torch.cuda.set_device(info.local_rank)
    if info.world > 1:
        timeout = timedelta(seconds=timeout_s)
        dist.init_process_group(
            backend=backend if use_gpu else "gloo",
            store=_group_store(init_method, info, timeout),
            world_size=info.world,
            rank=info.rank,
            timeout=timeout,
        )


# The stage of the job this process is in (train, test), for the messages of a failed collective.
_stage = "start-up"


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the stage of the job the block runs (train, test) in the error a failed collective raises. On an exception
    the name stays, so that the handler of launch_job still names where it happened."""
    global _stage
    _stage = name
    yield
    _stage = "between stages"


class LostProcessError(RuntimeError):
    """A collective of a multi-process job failed: another process died, raised or is stuck."""


def _is_collective_failure(err: BaseException) -> bool:
    """Whether `err` came from the communication backend (a peer closed its connections, or a collective timed out)
    rather than from this process's own work. NCCL and the rendezvous store raise DistError subclasses; gloo raises a
    RuntimeError whose message names its transport source file."""
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and "gloo/transport" in str(err))


def _run_in_process_group(func: Callable[[Any], Any], cfg: Any, info: ProcessInfo, init_method: str,
                          use_gpu: bool) -> Any:
    """Start the process group, run `func(cfg)` in it, then leave the group. A failed collective, or a rendezvous that
    timed out, is re-raised as a LostProcessError that names the stage (see :func:`stage`), says what most likely
    happened and how the job continues."""
    global _stage
    _stage = "start-up"
    try:
        _init_process_group(info, use_gpu, cfg.DIST_BACKEND, init_method, cfg.DIST_TIMEOUT_SECS)
        return func(cfg)
    except Exception as err:
        if info.world > 1 and _is_collective_failure(err):
            cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            message = (
                f"process {info.rank} of {info.world} stops in stage {_stage}: a collective operation with the other "
                f"processes failed ({cause}). Another process of the job died, raised an error, or was stuck for more "
                f"than DIST_TIMEOUT_SECS ({cfg.DIST_TIMEOUT_SECS} s); its own log names the cause. Nothing after the "
                f"newest checkpoint in {cfg.OUTPUT_DIR}/checkpoints is saved: restarting the same command resumes "
                "from it (torchrun --max-restarts N and a requeued SLURM job restart by themselves)"
            )
            logger.error(message)
            raise LostProcessError(message) from err
        raise
    finally:
        destroy()


def _spawned_worker(local_rank: int, func: Callable[..., Any], cfg: Any, init_method: str, per_machine: int,
                    shard_id: int, num_shards: int, use_gpu: bool) -> None:
    info = ProcessInfo(shard_id * per_machine + local_rank, per_machine * num_shards, local_rank)
    try:
        _run_in_process_group(func, cfg, info, init_method, use_gpu)
    except UserError as err:
        if debugging():
            raise
        # One line, not mp.spawn's traceback of the child; the launching process sees the exit status.
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)


def launch_job(cfg: Any, init_method: str, func: Callable[[Any], Any]) -> Any:
    """Run `func(cfg)` in every process of the job (see the module docstring), in one process group. Returns func's
    result in a single-process or launcher-started job, None after spawning.

    Run every stage of a job in one call (engine.trainer.train_and_test: train, then test): without a launcher each
    call spawns fresh processes, and on several machines the next call's processes could join the previous call's
    rendezvous store while its rank 0 is still finishing. Launcher-started processes may call it again: each call's
    group has store keys of its own."""
    use_gpu = cfg.NUM_GPUS > 0
    layout = job_layout(cfg.NUM_GPUS, cfg.NUM_SHARDS)
    info = launcher_process_info()
    if info is not None:
        # torchrun exports MASTER_ADDR/MASTER_PORT; under srun the sbatch script does, or --init_method names the host.
        method = "env://" if "MASTER_ADDR" in os.environ else init_method
        return _run_in_process_group(func, cfg, info, method, use_gpu)
    if layout.world > 1:
        try:
            mp.spawn(
                _spawned_worker,
                nprocs=layout.per_machine,
                args=(func, cfg, init_method, layout.per_machine, cfg.SHARD_ID, cfg.NUM_SHARDS, use_gpu),
                daemon=False,
            )
        except mp.ProcessExitedException as err:
            if err.exit_code == USER_ERROR_EXIT:
                raise ReportedUserError(f"process {err.error_index} stopped on the error it printed") from err
            raise
        return None
    if use_gpu:
        torch.cuda.set_device(0)
    return func(cfg)


def destroy() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_local_rank() -> int:
    info = launcher_process_info()
    if info is not None:
        return info.local_rank
    return torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes (a copy; the input is left unchanged)."""
    if get_world_size() == 1:
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out / get_world_size()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over all processes (a copy)."""
    if get_world_size() == 1:
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order (any picklable object; sizes may differ between processes)."""
    if get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of process `src`, on every process."""
    if get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model

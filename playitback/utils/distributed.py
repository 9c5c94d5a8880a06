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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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


def _init_process_group(info: ProcessInfo, use_gpu: bool, backend: str, init_method: str | None,
                        timeout_s: float) -> None:
    if use_gpu:
        torch.cuda.set_device(info.local_rank)
    if info.world > 1:
        timeout = timedelta(seconds=timeout_s)
        store = _torchrun_attempt_store(info.world, timeout)
        dist.init_process_group(
            backend=backend if use_gpu else "gloo",
            init_method=None if store else init_method or "env://",
            store=store,
            world_size=info.world,
            rank=info.rank,
            timeout=timeout,
        )


def _torchrun_attempt_store(world: int, timeout: timedelta) -> dist.Store | None:
    """Under torchrun, the rendezvous store of this restart attempt; None elsewhere (init_method is used).

    torchrun's agent keeps one TCPStore for every restart of a static rendezvous (its default) and its workers join it
    without a per-attempt prefix: the processes of a restarted group then read the addresses the previous attempt
    published (gloo pairs, NCCL ids), connect to ports nobody listens on and fail or hang until the timeout. A key
    prefix per restart attempt (TORCHELASTIC_RESTART_COUNT, the same in every worker of an attempt) isolates them.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "TORCHELASTIC_RESTART_COUNT" not in env:
        return None
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"playitback/attempt_{env['TORCHELASTIC_RESTART_COUNT']}", store)


class LostProcessError(RuntimeError):
    """A collective of a multi-process job failed: another process died, raised or is stuck."""


def _is_collective_failure(err: BaseException) -> bool:
    """Whether `err` came from the communication backend (a peer closed its connections, or a collective timed out)
    rather than from this process's own work. NCCL and the rendezvous store raise DistError subclasses; gloo raises a
    RuntimeError whose message names its transport source file."""
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError) and "gloo/transport" in str(err))


def _run_in_process_group(func: Callable[[Any], Any], cfg: Any, info: ProcessInfo) -> Any:
    """`func(cfg)` in a started process group, then leave the group. A failed collective is re-raised as a
    LostProcessError that says what most likely happened and how the job continues."""
    try:
        return func(cfg)
    except Exception as err:
        if info.world > 1 and _is_collective_failure(err):
            cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            message = (
                f"process {info.rank} of {info.world} stops: a collective operation with the other processes failed "
                f"({cause}). Another process of the job died, raised an error, or was stuck for more than "
                f"DIST_TIMEOUT_SECS ({cfg.DIST_TIMEOUT_SECS} s); its own log names the cause. Nothing after the newest "
                f"checkpoint in {cfg.OUTPUT_DIR}/checkpoints is saved: restarting the same command resumes from it "
                "(torchrun --max-restarts N and a requeued SLURM job restart by themselves)"
            )
            logger.error(message)
            raise LostProcessError(message) from err
        raise
    finally:
        destroy()


def _spawned_worker(local_rank: int, func: Callable[..., Any], cfg: Any, init_method: str, per_machine: int,
                    shard_id: int, num_shards: int, backend: str, use_gpu: bool) -> None:
    info = ProcessInfo(shard_id * per_machine + local_rank, per_machine * num_shards, local_rank)
    _init_process_group(info, use_gpu, backend, init_method, cfg.DIST_TIMEOUT_SECS)
    _run_in_process_group(func, cfg, info)


def launch_job(cfg: Any, init_method: str, func: Callable[[Any], Any]) -> Any:
    """Run `func(cfg)` in every process of the job (see the module docstring). Returns func's result in a
    single-process or launcher-started job, None after spawning."""
    use_gpu = cfg.NUM_GPUS > 0
    layout = job_layout(cfg.NUM_GPUS, cfg.NUM_SHARDS)
    info = launcher_process_info()
    if info is not None:
        # torchrun exports MASTER_ADDR/MASTER_PORT; under srun the sbatch script does, or --init_method names the host.
        method = "env://" if "MASTER_ADDR" in os.environ else init_method
        _init_process_group(info, use_gpu, cfg.DIST_BACKEND, method, cfg.DIST_TIMEOUT_SECS)
        return _run_in_process_group(func, cfg, info)
    if layout.world > 1:
        mp.spawn(
            _spawned_worker,
            nprocs=layout.per_machine,
            args=(func, cfg, init_method, layout.per_machine, cfg.SHARD_ID, cfg.NUM_SHARDS, cfg.DIST_BACKEND, use_gpu),
            daemon=False,
        )
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

#!/usr/bin/env python
"""Train and/or test PlayItBack (or its encoder alone) as a config says.

Examples:
    python tools/run_net.py --cfg configs/VGG-Sound/PlayItBackX2.yaml \\
        VGGSOUND.AUDIO_DATA_DIR /data/vggsound VGGSOUND.ANNOTATIONS_DIR data/VGG-Sound NUM_GPUS 8 OUTPUT_DIR runs/x2
    python tools/run_net.py --cfg ... TRAIN.ENABLE False TEST.ENABLE True TEST.CHECKPOINT_FILE_PATH ckpt.pyth
    python tools/run_net.py --cfg ... --num_shards 2 --shard_id 0 --init_method tcp://host:9999   # node 0 of 2
    torchrun --nproc_per_node 8 tools/run_net.py --cfg ...                                       # ranks from torchrun
    srun python tools/run_net.py --cfg ...                                                       # ranks from SLURM
"""
from __future__ import annotations

import argparse
import os
import sys

# OpenMP threads that spin while waiting steal the cores of the DataLoader workers; on a 2-core machine the default
# (active) policy made CPU training steps up to 20x slower. Must be set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from playitback.config import load_config  # noqa: E402
from playitback.engine.trainer import train_and_test  # noqa: E402
from playitback.utils.cli import exit_on_user_error  # noqa: E402
from playitback.utils.distributed import gpu_errors, launch_job  # noqa: E402
from playitback.utils.errors import DEBUG_ENV, USER_ERROR_EXIT  # noqa: E402

EPILOG = """\
Overrides: any number of KEY VALUE pairs after the flags, e.g. `NUM_GPUS 0 SOLVER.BASE_LR 1e-3 OUTPUT_DIR runs/a`.
Values are Python literals where they parse as one (1e-3, True, [1, 2]); an unknown key fails at once and names the
closest valid key. See docs/config.md for every key.

Processes: NUM_GPUS 0 runs on the CPU (gloo); NUM_GPUS 1 one process on one GPU; NUM_GPUS N > 1 spawns N processes on
this machine (NCCL), and with --num_shards M the job spans M machines started with the same command and their own
--shard_id. Under torchrun or srun the launcher's RANK/WORLD_SIZE/LOCAL_RANK (or SLURM_PROCID/SLURM_NTASKS/
SLURM_LOCALID) are used instead of spawning. The config stages run in order in the same processes: TRAIN.ENABLE,
then TEST.ENABLE.

Errors: a problem you can fix (a config key or value, a missing file or checkpoint, a bad annotation file, a frozen
encoder without weights) ends with one line `error: ...` naming it and the fix, exit status 2. --debug (or the
environment variable PLAYITBACK_DEBUG=1) shows the traceback instead.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train and test PlayItBack models.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="YAML config file (may inherit with _BASE_)")
    parser.add_argument("--shard_id", type=int, default=0, help="index of this machine in a multi-machine job")
    parser.add_argument("--num_shards", type=int, default=1, help="number of machines in the job")
    parser.add_argument("--init_method", default="tcp://localhost:9999",
                        help="rendezvous URL of spawned processes (tcp://host:port or file:///shared/path)")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of a user error (a config, path or file problem); same as {DEBUG_ENV}=1")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"  # spawned processes inherit it
    return exit_on_user_error(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.cfg_file, args.opts, shard_id=args.shard_id, num_shards=args.num_shards)
    # Before any process, process group or OUTPUT_DIR exists (the shipped configs ask for 8 GPUs).
    for problem in gpu_errors(cfg.NUM_GPUS):
        print(f"error: {problem}", file=sys.stderr)
        return USER_ERROR_EXIT
    # A preempted training saves and returns 0 without testing: the same command resumes, then tests.
    launch_job(cfg, args.init_method, train_and_test)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Two stages of one job in the same processes, as tools/run_net.py runs train then test, with rank 0 finishing the
first stage late (as it does when it saves the checkpoints): the second stage's process group must not read the
first one's addresses. Prints the second stage's all-reduced sum on rank 0.

    python stages_job.py [--num_shards 2 --shard_id K --init_method tcp://...] KEY VALUE ...  (under any launcher)
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from playitback.config import load_config
from playitback.utils import distributed as du

LATE_S = 3.0


def first_stage(cfg) -> None:
    du.barrier()
    if du.get_rank() == 0:
        time.sleep(LATE_S)  # the other ranks start the second stage's group first


def second_stage(cfg) -> None:
    total = du.all_reduce_sum(torch.tensor([du.get_rank() + 1.0]))
    if du.get_rank() == 0:
        print(f"second stage: sum {total.item():g} over {du.get_world_size()} process(es)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shard_id", type=int, default=0)
    parser.add_argument("--num_shards", type=int, default=1)
    parser.add_argument("--init_method", default="tcp://localhost:9999")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cfg = load_config("configs/Demo/PlayItBackX2.yaml", args.opts, shard_id=args.shard_id, num_shards=args.num_shards)
    du.launch_job(cfg, args.init_method, first_stage)
    du.launch_job(cfg, args.init_method, second_stage)
    return 0


if __name__ == "__main__":
    sys.exit(main())

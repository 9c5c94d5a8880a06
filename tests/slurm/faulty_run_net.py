"""tools/run_net.py with one fault injected: the process of rank R raises at its training step N, in the first
attempt of the job only (a torchrun restart, TORCHELASTIC_RESTART_COUNT > 0, runs clean).

    python tests/slurm/faulty_run_net.py --raise-at RANK STEP <tools/run_net.py arguments>
"""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

RUN_NET = Path(__file__).resolve().parents[2] / "tools" / "run_net.py"


def inject(rank: int, step: int) -> None:
    """Make ClassificationTask.step raise at training step `step` (1-based) of process `rank`."""
    from playitback.engine.task import ClassificationTask

    original = ClassificationTask.step
    done = {"steps": 0}

    def step_with_fault(self: ClassificationTask, batch: dict[str, Any], train: bool) -> Any:
        if train:
            done["steps"] += 1
            if done["steps"] == step:
                raise RuntimeError(f"injected fault: process {rank} raises at its training step {step}")
        return original(self, batch, train)

    this_rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    if this_rank == rank and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        ClassificationTask.step = step_with_fault


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] != "--raise-at":
        raise SystemExit(__doc__)
    inject(int(argv[1]), int(argv[2]))
    sys.argv = [str(RUN_NET), *argv[3:]]
    runpy.run_path(str(RUN_NET), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])

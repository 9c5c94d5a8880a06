"""tools/study.py: run ordering and resumption, and its statistics against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from study import Run, execute, interleave_seeds, paired_bootstrap


def test_runs_start_after_what_they_wait_for_and_done_runs_are_skipped() -> None:
    order: list[str] = []
    runs = [Run("b", lambda: order.append("b"), after=("a",)), Run("a", lambda: order.append("a")),
            Run("c", lambda: order.append("c"), after=("b",)), Run("old", lambda: order.append("old"),
                                                                 done=lambda: True)]
    execute(runs, jobs=2, log=lambda _: None)
    assert order == ["a", "b", "c"]


def test_a_failed_run_stops_what_waits_for_it() -> None:
    order: list[str] = []

    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        execute([Run("a", fail), Run("b", lambda: order.append("b"), after=("a",))], jobs=1, log=lambda _: None)
    assert order == []


def test_paired_bootstrap_interval() -> None:
    reference = np.zeros((2, 50), dtype=bool)
    better = reference.copy()
    better[:, :10] = True  # +20 points on every clip draw's mean, on average
    low, high = paired_bootstrap(better, reference, draws=4000)
    assert low < 20 < high and low > 5 and high < 35
    same_low, same_high = paired_bootstrap(reference, reference)
    assert same_low == same_high == 0.0


def test_seeds_are_interleaved_so_every_seed_gets_its_baseline_before_the_controls() -> None:
    per_seed = [[Run(f"seed{k}/{name}", lambda: None) for name in names]
                for k, names in enumerate((["stage1", "encoder_only", "coarse"], ["stage1", "encoder_only"]))]
    assert [run.name for run in interleave_seeds(per_seed)] == [
        "seed0/stage1", "seed1/stage1", "seed0/encoder_only", "seed1/encoder_only", "seed0/coarse"]

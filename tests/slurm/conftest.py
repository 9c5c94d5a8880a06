"""Fixtures of the multi-process job tests (marker `slurm`, `make test-slurm`): a private SLURM cluster, a small
dataset, and the uninterrupted 2-process reference run that every interrupted run is compared with (see jobs.py)."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import ClusterUnavailable, LocalSlurmCluster, free_port, missing_requirements
from engine_utils import REPO
from jobs import TORCHRUN, job_env, run_command


@pytest.fixture(scope="session")
def job_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 24 training clips (12 iterations of 8 per epoch) and 3 test clips each, 2 s long."""
    from playitback.synthetic.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("job_data")
    make_demo_dataset(root, num_classes=4, train_per_class=24, test_per_class=3, clip_secs=2.0, seed=0)
    return root


@pytest.fixture(scope="session")
def reference_run(job_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run: torchrun with 2 CPU processes."""
    out = tmp_path_factory.mktemp("reference")
    result = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()),
                             *run_command(out, job_data)], cwd=REPO, env=job_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurmCluster]:
    """A private one-node SLURM cluster for the whole session (skipped where SLURM, MUNGE or root is missing).

    Its folder is a fresh one in the system's temporary folder, not pytest's: munged wants every folder above its
    socket open to all, and pytest's base folder is private."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="playitback-slurm-"))
    cluster = LocalSlurmCluster(root)
    try:
        cluster.start()
    except ClusterUnavailable as err:
        pytest.fail(f"the SLURM packages are installed but the private cluster did not start: {err}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

"""Helpers for the end-to-end tests: a tiny demo dataset and tiny run configs that train in seconds on a CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_NET = REPO / "tools" / "run_net.py"

TINY_MODEL = [
    "AUDIO_DATA.CLIP_SECS", "2.0", "AUDIO_DATA.FRAMES0", "16", "MODEL.NUM_CLASSES", "4",
    "ENCODER.EMBED_DIM", "8", "ENCODER.DEPTH", "2", "ENCODER.DIM_MUL", "[[1, 2.0]]", "ENCODER.HEAD_MUL", "[[1, 2.0]]",
    "ENCODER.POOL_Q_STRIDE", "[[1, 2, 2]]", "DECODER.INPUT_CHANNELS", "16", "DECODER.NUM_LATENTS", "4",
    "DECODER.LATENT_DIM", "16", "DECODER.LATENT_HEADS", "2", "DECODER.LATENT_DIM_HEAD", "8",
    "DECODER.CROSS_DIM_HEAD", "8", "DECODER.SELF_PER_CROSS_ATTN", "1",
    "SPEC_AUGMENT.TIME_WARP", "2", "SPEC_AUGMENT.FREQ_MASK", "8", "SPEC_AUGMENT.TIME_MASK", "3",
]


def make_tiny_dataset(root: Path) -> Path:
    """4 classes x 6 training and 3 test clips of 2 s (the demo generator at a small size)."""
    from playitback.synthetic.demo import make_demo_dataset

    if not (root / "annotations" / "train.csv").is_file():
        make_demo_dataset(root, num_classes=4, train_per_class=6, test_per_class=3, clip_secs=2.0, seed=0)
    return root


def run_opts(data: Path, output_dir: Path, epochs: int = 2, batch: int = 8, workers: int = 0) -> list[str]:
    """Overrides of a tiny CPU run on `data` writing to `output_dir`. PlayItBack runs start from a random frozen
    encoder (MODEL.ALLOW_RANDOM_WEIGHTS): they test the machinery, not the method."""
    return [
        "MODEL.ALLOW_RANDOM_WEIGHTS", "True",
        "NUM_GPUS", "0", "VGGSOUND.AUDIO_DATA_DIR", str(data / "audio"),
        "VGGSOUND.ANNOTATIONS_DIR", str(data / "annotations"), *TINY_MODEL,
        "TRAIN.BATCH_SIZE", str(batch), "TEST.BATCH_SIZE", str(batch), "SOLVER.MAX_EPOCH", str(epochs),
        "SOLVER.WARMUP_EPOCHS", "0.5", "TRAIN.EVAL_PERIOD", "1", "TRAIN.CHECKPOINT_PERIOD", "1",
        "DATA_LOADER.NUM_WORKERS", str(workers), "LOG_PERIOD", "1", "OUTPUT_DIR", str(output_dir),
    ]


def run_net(cfg: str, opts: list[str], env: dict[str, str] | None = None,
            launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run tools/run_net.py in a fresh process (optionally under a launcher such as torchrun)."""
    command = [*(launcher or [sys.executable]), str(RUN_NET), "--cfg", str(REPO / cfg), *opts]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-5000:]}")
    return result


def start_run_net(cfg: str, opts: list[str]) -> subprocess.Popen:
    """Start tools/run_net.py in the background (stdout to a pipe), in its own process group (its pid is the group id)
    so that a test can signal it with its DataLoader workers, as SLURM and a terminal do."""
    command = [sys.executable, str(RUN_NET), "--cfg", str(REPO / cfg), *opts]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def metrics(output_dir: Path, split: str) -> list[dict]:
    """The records of one split in OUTPUT_DIR/metrics.jsonl."""
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record.get("split") == split]

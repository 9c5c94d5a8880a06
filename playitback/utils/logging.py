"""Logging: stdout + OUTPUT_DIR/stdout.log on the main process, `json_stats: {...}` lines, OUTPUT_DIR/metrics.jsonl,
and optional TensorBoard / wandb writers behind config switches."""
from __future__ import annotations

import logging
import math
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import simplejson

from playitback.utils.distributed import is_main_process

LOG_FORMAT = "[%(asctime)s][%(levelname)s] %(name)s: %(message)s"


def setup_logging(output_dir: str | Path | None) -> None:
    """Root logging: INFO on the main process (stdout and OUTPUT_DIR/stdout.log, appended), warnings elsewhere."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    main = is_main_process()
    root.setLevel(logging.INFO if main else logging.WARNING)
    formatter = logging.Formatter(LOG_FORMAT, datefmt="%m/%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(formatter)
    root.addHandler(stream)
    if main and output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / "stdout.log", mode="a")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return value if not math.isfinite(value) else Decimal(f"{value:.5f}")
    return value


def format_json_stats(stats: dict[str, Any]) -> str:
    """The `json_stats: {...}` line: keys sorted, floats with 5 decimals."""
    return "json_stats: " + simplejson.dumps({k: _round(v) for k, v in stats.items()}, sort_keys=True,
                                             use_decimal=True, ignore_nan=True)


class MetricWriter:
    """Every stats record goes to the log (a `json_stats` line), to OUTPUT_DIR/metrics.jsonl (one JSON object per
    line), and to TensorBoard / wandb when enabled. Only the main process writes."""

    def __init__(self, output_dir: str | Path, tensorboard_dir: str | Path | None = None,
                 wandb_config: dict[str, Any] | None = None) -> None:
        self.enabled = is_main_process()
        self.jsonl_path = Path(output_dir) / "metrics.jsonl"
        self.tensorboard = None
        self.wandb = None
        if not self.enabled:
            return
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(tensorboard_dir))
        if wandb_config is not None:
            self.wandb = _start_wandb(**wandb_config)

    def write(self, stats: dict[str, Any], step: int | None = None) -> None:
        """Log one record; `stats["split"]` names it (train_iter, train_epoch, val_epoch, test_final, ...)."""
        if not self.enabled:
            return
        logging.getLogger("playitback").info(format_json_stats(stats))
        with open(self.jsonl_path, "a") as handle:
            handle.write(simplejson.dumps(stats, sort_keys=True, ignore_nan=True) + "\n")
            handle.flush()
        numeric = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        split = stats.get("split", "stats")
        if self.tensorboard is not None and step is not None:
            for key, value in numeric.items():
                self.tensorboard.add_scalar(f"{split}/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"{split}/{k}": v for k, v in numeric.items()}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(project: str, run_id: str, mode: str, config: dict[str, Any], output_dir: str) -> Any:
    try:
        import wandb
    except ImportError as err:
        raise RuntimeError("WANDB.ENABLE is True but wandb is not installed: pip install wandb") from err
    os.environ.setdefault("WANDB_DIR", output_dir)
    return wandb.init(project=project, id=run_id or None, resume="allow" if run_id else None, mode=mode,
                      config=config, dir=output_dir)

"""Checkpoint files: atomic writes, safe (weights-only) loading, epoch discovery for auto-resume, RNG state.

Layout: ``OUTPUT_DIR/checkpoints/checkpoint_epoch_{NNNNN}.pyth`` (NNNNN = number of finished epochs, 1-based) and
``OUTPUT_DIR/checkpoints/checkpoint_best.pyth``. Every checkpoint must load with ``torch.load(weights_only=True)``:
tensors, numbers, strings, lists, tuples and dicts only, so loading a checkpoint never runs code from the file.
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from playitback.models.weights import POSITION_SUFFIX, LoadReport, remap_state_dict
from playitback.utils.errors import UserError

logger = logging.getLogger(__name__)

CHECKPOINT_RE = r"checkpoint_epoch_(\d{5})\.pyth"
CHECKPOINT_DIRNAME = "checkpoints"
# What this project's training checkpoints hold besides the original's keys (epoch, model_state, optimizer_state,
# scaler_state, cfg): only such a checkpoint may restore an optimiser, scaler, schedule position and epoch.
TRAINING_STATE_KEYS = ("iteration_in_epoch", "global_step", "rng_states", "optimizer_state", "scaler_state")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be used: truncated, corrupt, or refused by weights-only loading."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that names no file."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds arbitrary pickled Python objects, so loading it could run code from the file."""


def is_training_checkpoint(checkpoint: dict) -> bool:
    """Whether a loaded checkpoint was written by this project's trainer (not an original PlayItBack, encoder-only
    export or MViTv2 checkpoint, which hold weights to start from, not a run to continue)."""
    return all(key in checkpoint for key in TRAINING_STATE_KEYS)


def copy_checkpoint(source: str | Path, destination: str | Path) -> None:
    """Copy a checkpoint file atomically (temporary file in the destination's folder, fsync, rename, fsync)."""
    destination = Path(destination)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, length=16 * 2**20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(destination.parent)


def checkpoint_path(output_dir: str | Path, epoch: int) -> Path:
    """Path of the checkpoint written after ``epoch`` finished epochs.

    Args:
        output_dir: The run's OUTPUT_DIR.
        epoch: 1-based epoch number on disk, i.e. the trainer's 0-based ``cur_epoch + 1``.

    Returns:
        ``output_dir/checkpoints/checkpoint_epoch_{epoch:05d}.pyth``.
    """
    if not 1 <= epoch <= 99999:
        raise ValueError(f"checkpoint epoch must be in [1, 99999] (the 0-based epoch + 1), got {epoch}")
    return Path(output_dir) / CHECKPOINT_DIRNAME / f"checkpoint_epoch_{epoch:05d}.pyth"


def best_checkpoint_path(output_dir: str | Path) -> Path:
    """Path of the best-so-far checkpoint, ``output_dir/checkpoints/checkpoint_best.pyth``."""
    return Path(output_dir) / CHECKPOINT_DIRNAME / "checkpoint_best.pyth"


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; platforms without directory file descriptors (Windows) skip it.
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Writes ``state`` atomically: the final path holds either the old file or the complete new one.

    The state goes to a temporary file in the same directory (a name no checkpoint listing matches), is flushed and
    fsynced, checked to load with ``weights_only=True``, and renamed over ``path``; the directory is then fsynced so
    the rename survives a power loss. On any error the temporary file is removed and the old file stays intact.

    Args:
        path: Destination file.
        state: Checkpoint dict of tensors, numbers, strings, lists, tuples and dicts.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        # A state the trainer cannot resume from must fail now, not when resuming; mmap keeps this check cheap.
        try:
            torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            raise CheckpointError(
                f"refusing to write {path}: the state does not load with weights_only=True ({err}); store only "
                "tensors, numbers, strings, lists, tuples and dicts (e.g. the config as its YAML string)"
            ) from err
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _load_safetensors(path: Path) -> dict:
    """A ``.safetensors`` state dict (the Hugging Face hub's ``model.safetensors``), which holds only tensors."""
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise CheckpointError(f"checkpoint {path} is a safetensors file: pip install safetensors to read it") from err
    try:
        return load_file(path, device="cpu")
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be loaded: {err}") from err


def load_checkpoint_file(path: str | Path, key: str = "") -> dict:
    """Loads a checkpoint on the CPU with ``weights_only=True`` (a ``.safetensors`` file with safetensors).

    Args:
        path: Checkpoint file.
        key: the config key or flag that named it, for the messages.

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointNotFoundError: If the file does not exist.
        UnsafeCheckpointError: If the file holds pickled Python objects beyond tensors and plain containers.
        CheckpointError: If the file is truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist{f' ({key})' if key else ''}; give the path "
                                      "of a checkpoint file, e.g. <OUTPUT_DIR>/checkpoints/checkpoint_best.pyth")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            unsafe = []
        if unsafe:
            raise UnsafeCheckpointError(
                f"refusing to load checkpoint {path}: it contains pickled Python objects ({', '.join(unsafe)}), and "
                "unpickling them can run arbitrary code from the file. If you trust its origin, convert it once: "
                "load it with torch.load(path, weights_only=False), replace those objects by tensors and plain "
                "Python types (numpy arrays by torch.from_numpy(...), a config object by its YAML string) and "
                "save the result with torch.save"
            ) from err
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt and cannot be loaded: {err}") from err


def list_epoch_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Epoch checkpoints of a run, sorted by epoch number.

    Only names matching :data:`CHECKPOINT_RE` count, so ``checkpoint_best.pyth`` and temporary files are ignored.

    Args:
        output_dir: The run's OUTPUT_DIR.

    Returns:
        (1-based epoch, path) pairs in ascending epoch order; empty when there are none.
    """
    directory = Path(output_dir) / CHECKPOINT_DIRNAME
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = re.fullmatch(CHECKPOINT_RE, entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_valid_checkpoint(output_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest epoch checkpoint that loads, for auto-resume.

    A truncated or corrupt checkpoint is skipped with a logged warning naming it, and the previous epoch is tried.
    A checkpoint refused as unsafe is not skipped: :class:`UnsafeCheckpointError` propagates, because silently
    resuming from an older epoch would hide it.

    Args:
        output_dir: The run's OUTPUT_DIR.

    Returns:
        (path, checkpoint dict), or None when no epoch checkpoint loads.
    """
    for _, path in reversed(list_epoch_checkpoints(output_dir)):
        try:
            return path, load_checkpoint_file(path)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as err:
            logger.warning("skipping checkpoint %s for resumption: %s", path, err)
    return None


def rng_state() -> dict:
    """The state of every random generator, in types that load with ``weights_only=True``.

    Covers Python ``random``, numpy's global generator (as tensors instead of numpy arrays), torch's CPU generator and,
    when CUDA is available, every CUDA device's generator.

    Returns:
        A dict for :func:`set_rng_state`.
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores the generators saved by :func:`rng_state`.

    CUDA states are restored for the devices present in both the saved state and this machine; a mismatch in the
    device count is logged.

    Args:
        state: The dict from :func:`rng_state` (possibly after a save/load round trip).
    """
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved, present = state["cuda"], torch.cuda.device_count()
        if len(saved) != present:
            logger.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d; restoring %d",
                           len(saved), present, min(len(saved), present))
        for device, device_state in enumerate(saved[:present]):
            torch.cuda.set_rng_state(device_state, device)


def load_weights(model: nn.Module, path: str | Path, clear_name_patterns: Iterable[str] = (),
                 strict: bool = False, key: str = "") -> tuple[dict, LoadReport]:
    """Load model weights from a checkpoint (PlayItBack, encoder pretraining, or a bare/ImageNet MViTv2 state dict).

    Args:
        model: The plain model (not wrapped).
        path: The checkpoint.
        clear_name_patterns: Substrings removed from the checkpoint's keys (TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN).
        strict: Require every weight of the model from the checkpoint (testing, prediction: a decoder or head left at
            its random initialisation would give confident nonsense).
        key: the config key or flag that named the file, for the messages.

    Returns:
        (the checkpoint dict, the report of which model keys it filled).

    Raises:
        CheckpointError: No weight matches, or (strict) some are missing.
    """
    checkpoint = load_checkpoint_file(path, key)
    source = checkpoint.get("model_state", checkpoint.get("model", checkpoint))
    grids = {f"{prefix}.{POSITION_SUFFIX}".lstrip("."): module.position_grid for prefix, module in model.named_modules()
             if isinstance(getattr(module, "position_grid", None), tuple)}
    mapped, report = remap_state_dict(source, model.state_dict(), clear_name_patterns, grids)
    if not report.loaded:
        raise CheckpointError(
            f"no weight of {path} matches this model (different architecture or class count?): {report.summary()}"
        )
    if strict and report.missing:
        shown = ", ".join(report.missing[:5]) + (", ..." if len(report.missing) > 5 else "")
        raise CheckpointError(
            f"checkpoint {path} does not fit the model of this config: {len(report.missing)} of "
            f"{len(model.state_dict())} weights are missing or have another shape ({shown}); pass the config the "
            "checkpoint was trained with (the same MODEL.*, ENCODER.*, DECODER.* and class count), or "
            "MODEL.ALLOW_RANDOM_WEIGHTS True to test with those weights random"
        )
    model.load_state_dict(mapped, strict=False)
    logger.info("loaded weights from %s: %s", path, report.summary())
    return checkpoint, report

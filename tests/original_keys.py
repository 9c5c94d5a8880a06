"""The state-dict keys and shapes of the original PlayItBack models, shipped as ``tests/fixtures/original_state_dict_keys.txt``.

The file lists, per original config (``## VGG-Sound/PlayItBackX2``), one ``key (shape)`` line per tensor, in the
order of the original's ``state_dict()``. It holds names and shapes only (no weights), so every clone can check
that original checkpoints load.
"""
from __future__ import annotations

import re
from pathlib import Path

KEY_FILE = Path(__file__).resolve().parent / "fixtures" / "original_state_dict_keys.txt"
MODELS = ("VGG-Sound/PlayItBackX2", "VGG-Sound/PlayItBackX1_S", "EPIC-KITCHENS/PlayItBackX2")


def original_keys(model_name: str, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """``{key without prefix: shape}`` of the keys under ``prefix`` in ``model_name``'s section, in file order."""
    keys: dict[str, tuple[int, ...]] = {}
    section = None
    for line in KEY_FILE.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif section == model_name and line.startswith(prefix) and line.strip():
            key, shape = line.split(" ", 1)
            keys[key[len(prefix):]] = tuple(int(n) for n in re.findall(r"\d+", shape))
    if not keys:
        raise KeyError(f"no keys under {prefix!r} for {model_name!r} in {KEY_FILE}")
    return keys

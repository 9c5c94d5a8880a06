"""Map a foreign state dict (original PlayItBack, bare MViTv2, ImageNet MViTv2, DDP-wrapped) onto a model.

The matching rules are those of the original checkpoint loader (ORIGINAL.md 4.7), made explicit and reported
instead of silently skipped. Reading the file and calling ``load_state_dict`` is left to the caller, so this module
does no I/O.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

# Prefixes tried after the key itself: a bare MViT checkpoint loads into PlayItBack's encoder this way.
_SUBMODULE_PREFIXES = ("encoder.", "decoder.")
_DDP_PREFIX = "module."
_PATCH_KERNEL_SUFFIX = "patch_embed.proj.weight"
# The original PlayItBack named the saliency of playback i `saliency_slots.{i}`, an nn.Sequential whose module 0 was the
# position embedding and module 3 the slot attention (1 and 2 held no parameters). Its keys (and those of this
# project's checkpoints before the modules were named) load under the names of the module tree.
_ORIGINAL_KEY_RENAMES = (
    (re.compile(r"^saliency_slots\.(\d+)\.0\."), r"saliencies.\1.position_embed."),
    (re.compile(r"^saliency_slots\.(\d+)\.3\."), r"saliencies.\1.slot_attention."),
)


@dataclass
class LoadReport:
    """What :func:`remap_state_dict` did with each key.

    Attributes:
        loaded: Target keys that receive a tensor.
        missing: Target keys that receive nothing (they keep their current values), including shape mismatches.
        unexpected: Source keys (after prefix/pattern stripping) with no counterpart in the target, e.g. the
            relative-position tables or cls token of an ImageNet MViTv2.
        shape_mismatch: Target keys that exist but whose source tensor has another shape (e.g. a head with another
            class count); they are skipped.
        adapted: Target keys whose tensor was transformed: an RGB patch kernel averaged to one channel, or a key
            that needed an ``encoder.``/``decoder.`` prefix.
        remapped: True when any key needed an ``encoder.``/``decoder.`` prefix; the checkpoint then comes from
            another model layout, so its optimizer state must not be loaded.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    remapped: bool = False

    def summary(self, max_names: int = 10) -> str:
        """One multi-line, human-readable account of the mapping.

        Args:
            max_names: How many key names to show per category before eliding the rest.

        Returns:
            The summary text.
        """

        def names(keys: list[str]) -> str:
            shown = ", ".join(keys[:max_names])
            return shown + (f", ... ({len(keys) - max_names} more)" if len(keys) > max_names else "")

        total = len(self.loaded) + len(self.missing)
        lines = [f"loaded {len(self.loaded)}/{total} target tensors ({len(self.adapted)} adapted)"]
        if self.remapped:
            lines.append("keys were remapped under encoder./decoder.: do not load the optimizer state")
        for label, keys in (
            ("adapted", self.adapted),
            ("shape mismatch (skipped)", self.shape_mismatch),
            ("missing (not loaded)", self.missing),
            ("unexpected (ignored)", self.unexpected),
        ):
            if keys:
                lines.append(f"{label} [{len(keys)}]: {names(keys)}")
        return "\n".join(lines)


def from_original_key(key: str) -> str:
    """The name in this module tree of an original PlayItBack state-dict key (other keys are returned unchanged)."""
    for pattern, replacement in _ORIGINAL_KEY_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _clean_key(key: str, clear_name_patterns: Sequence[str]) -> str:
    if key.startswith(_DDP_PREFIX):
        key = key[len(_DDP_PREFIX):]
    for pattern in clear_name_patterns:
        key = key.replace(pattern, "")
    return from_original_key(key)


def _is_rgb_patch_kernel(name: str, source: Tensor, target: Tensor) -> bool:
    """Whether ``source`` is a 3-channel patch kernel that averages into the 1-channel ``target``."""
    return (
        name.endswith(_PATCH_KERNEL_SUFFIX)
        and source.ndim == 4
        and source.shape[1] == 3
        and target.shape[1] == 1
        and source.shape[:1] + source.shape[2:] == target.shape[:1] + target.shape[2:]
    )


def remap_state_dict(
    source: Mapping[str, Tensor], target: Mapping[str, Tensor], clear_name_patterns: Sequence[str] = ()
) -> tuple[dict[str, Tensor], LoadReport]:
    """Match the tensors of ``source`` to the keys of ``target``.

    Per source key, in order: strip a leading ``module.`` (DDP) and every ``clear_name_patterns`` substring, and rename
    the original's saliency keys (``saliency_slots.{i}.0.`` / ``.3.`` -> ``saliencies.{i}.position_embed.`` /
    ``.slot_attention.``); then
    take the first of ``key``, ``encoder.`` + key, ``decoder.`` + key that exists in ``target`` with the same shape
    (a prefixed name is skipped when another source key has that exact name).
    Failing that, a 3-channel ``patch_embed.proj.weight`` ``[D, 3, k, k]`` loads into a ``[D, 1, k, k]`` target as
    the mean over the RGB channels (ImageNet MViTv2). A candidate that exists with another shape is reported as a
    shape mismatch; a key with no candidate at all is reported as unexpected. Nothing raises, and neither input is
    modified.

    Args:
        source: The foreign state dict (e.g. ``checkpoint["model_state"]``).
        target: The model's state dict (only the keys and shapes are read).
        clear_name_patterns: Substrings to delete from every source key (``TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN``).

    Returns:
        A state dict with target keys, ready for ``model.load_state_dict(state, strict=False)``, and the report.
    """
    mapped: dict[str, Tensor] = {}
    report = LoadReport()
    mismatched: set[str] = set()
    cleaned = {raw_key: _clean_key(raw_key, clear_name_patterns) for raw_key in source}
    # A target filled by a source key of the same name is never overwritten through a prefix (the original's unused
    # top-level `norm` must not replace `encoder.norm`).
    claimed = {key for raw_key, key in cleaned.items()
               if key in target and tuple(target[key].shape) == tuple(source[raw_key].shape)}
    for raw_key, tensor in source.items():
        key = cleaned[raw_key]
        candidates = [key] + [prefix + key for prefix in _SUBMODULE_PREFIXES if prefix + key not in claimed]
        present = [name for name in candidates if name in target]
        exact = next((name for name in present if tuple(target[name].shape) == tuple(tensor.shape)), None)
        rgb = next((name for name in present if _is_rgb_patch_kernel(name, tensor, target[name])), None)
        if exact is not None:
            mapped[exact] = tensor
            chosen = exact
        elif rgb is not None:
            mapped[rgb] = tensor.mean(dim=1, keepdim=True)
            chosen = rgb
            report.adapted.append(rgb)
        elif present:
            mismatched.update(present)
            continue
        else:
            report.unexpected.append(key)
            continue
        if chosen != key:
            report.remapped = True
            if chosen not in report.adapted:
                report.adapted.append(chosen)

    report.loaded = [name for name in target if name in mapped]
    report.missing = [name for name in target if name not in mapped]
    report.shape_mismatch = [name for name in target if name in mismatched and name not in mapped]
    return mapped, report

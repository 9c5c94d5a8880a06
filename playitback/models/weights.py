"""Map a foreign state dict (original PlayItBack, bare MViTv2, ImageNet MViTv2, Hugging Face AST, DDP-wrapped) onto a
model.

The matching rules are those of the original PlayItBack's checkpoint loader (PySlowFast's: DDP prefixes, submodule
prefixes, name patterns, RGB kernels), made explicit and reported instead of silently skipped. Reading the file and calling ``load_state_dict`` is left to the caller, so this module
does no I/O.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
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

# Hugging Face AST checkpoints (ASTModel or ASTForAudioClassification; the hub's files still use the names of
# transformers 4, transformers 5 renamed the layers) onto playitback.models.ast.AST. Applied only to a state dict
# that has AST keys, so that no other model's `classifier.` or `encoder.layer.` is touched.
_HF_AST_MARKERS = ("audio_spectrogram_transformer.", "embeddings.patch_embeddings.")
_HF_AST_KEY_RENAMES = tuple((re.compile(pattern), replacement) for pattern, replacement in (
    (r"^audio_spectrogram_transformer\.", ""),
    (r"^classifier\.", "head."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.", r"layers.\1."),
))
POSITION_SUFFIX = "embeddings.position_embeddings"
# cls and distillation tokens in front of an AST's patch positions.
_AST_SUMMARY_TOKENS = 2


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


def from_hf_ast_key(key: str) -> str:
    """The name in :class:`playitback.models.ast.AST` of a Hugging Face AST state-dict key."""
    for pattern, replacement in _HF_AST_KEY_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _clean_key(key: str, clear_name_patterns: Sequence[str], hf_ast: bool) -> str:
    if key.startswith(_DDP_PREFIX):
        key = key[len(_DDP_PREFIX):]
    for pattern in clear_name_patterns:
        key = key.replace(pattern, "")
    return from_hf_ast_key(key) if hf_ast else from_original_key(key)


def resize_position_embeddings(source: Tensor, grid: tuple[int, int]) -> Tensor | None:
    """An AST position embedding ``[1, 2 + F'' * T_s, D]`` resized along time to the grid ``(F'', T'')`` of another
    clip length (the summary tokens kept, the patch positions interpolated bilinearly, as AST adapts its ImageNet
    initialisation); None when ``source`` does not have the same F''."""
    grid_f, grid_t = grid
    patches = source.shape[1] - _AST_SUMMARY_TOKENS
    if source.ndim != 3 or patches <= 0 or patches % grid_f:
        return None
    summary, positions = source[:, :_AST_SUMMARY_TOKENS], source[:, _AST_SUMMARY_TOKENS:]
    image = positions.transpose(1, 2).reshape(1, source.shape[2], grid_f, patches // grid_f)
    resized = F.interpolate(image.float(), size=(grid_f, grid_t), mode="bilinear", align_corners=False)
    return torch.cat((summary, resized.flatten(2).transpose(1, 2).to(source.dtype)), dim=1)


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
    source: Mapping[str, Tensor], target: Mapping[str, Tensor], clear_name_patterns: Sequence[str] = (),
    position_grids: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[dict[str, Tensor], LoadReport]:
    """Match the tensors of ``source`` to the keys of ``target``.

    Per source key, in order: strip a leading ``module.`` (DDP) and every ``clear_name_patterns`` substring, and rename
    the original's saliency keys (``saliency_slots.{i}.0.`` / ``.3.`` -> ``saliencies.{i}.position_embed.`` /
    ``.slot_attention.``); then
    take the first of ``key``, ``encoder.`` + key, ``decoder.`` + key that exists in ``target`` with the same shape
    (a prefixed name is skipped when another source key has that exact name).
    Failing that, a 3-channel ``patch_embed.proj.weight`` ``[D, 3, k, k]`` loads into a ``[D, 1, k, k]`` target as
    the mean over the RGB channels (ImageNet MViTv2), and an AST position embedding made for another clip length is
    resized to the target's grid (``position_grids``, :func:`resize_position_embeddings`). A state dict with Hugging
    Face AST keys (``audio_spectrogram_transformer.*``, ``encoder.layer.N.*``, ``classifier.*``) is renamed to
    :class:`~playitback.models.ast.AST`'s names first (:func:`from_hf_ast_key`). A candidate that exists with another shape is reported as a
    shape mismatch; a key with no candidate at all is reported as unexpected. Nothing raises, and neither input is
    modified.

    Args:
        source: The foreign state dict (e.g. ``checkpoint["model_state"]``).
        target: The model's state dict (only the keys and shapes are read).
        clear_name_patterns: Substrings to delete from every source key (``TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN``).
        position_grids: Target key of an AST position embedding -> its patch grid ``(F'', T'')``.

    Returns:
        A state dict with target keys, ready for ``model.load_state_dict(state, strict=False)``, and the report.
    """
    mapped: dict[str, Tensor] = {}
    report = LoadReport()
    mismatched: set[str] = set()
    hf_ast = any(key.removeprefix(_DDP_PREFIX).startswith(_HF_AST_MARKERS) for key in source)
    cleaned = {raw_key: _clean_key(raw_key, clear_name_patterns, hf_ast) for raw_key in source}
    position_grids = position_grids or {}
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
        resized = next(((name, value) for name in present if name in position_grids
                        and (value := resize_position_embeddings(tensor, position_grids[name])) is not None
                        and value.shape == target[name].shape), None)
        if exact is not None:
            mapped[exact] = tensor
            chosen = exact
        elif rgb is not None:
            mapped[rgb] = tensor.mean(dim=1, keepdim=True)
            chosen = rgb
            report.adapted.append(rgb)
        elif resized is not None:
            chosen, mapped[resized[0]] = resized
            report.adapted.append(chosen)
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

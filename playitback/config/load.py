"""Loading a run's config: defaults <- YAML (with ``_BASE_``) <- ``KEY VALUE`` overrides <- launcher flags, then one
validation of the merged result.

Unknown keys fail at once with the closest valid key named; keys the original had but never used are ignored with a
warning (so its YAML files still load); values are type-checked against the defaults. Every problem of a config is
reported together in one :class:`ConfigError`.
"""
from __future__ import annotations

import ast
import difflib
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from fvcore.common.config import CfgNode

from playitback import registry
from playitback.config import choices, derived
from playitback.config.defaults import ENCODER_VARIANTS, REMOVED_KEYS, get_cfg
from playitback.utils.errors import UserError

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"


class ConfigError(UserError, ValueError):
    """A config file, key or value a user has to fix."""


def _all_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.extend(_all_keys(value, full + ".") if isinstance(value, CfgNode) else [full])
    return keys


def _removed_reason(full_key: str) -> str | None:
    parts = full_key.split(".")
    for end in range(len(parts), 0, -1):
        reason = REMOVED_KEYS.get(".".join(parts[:end]))
        if reason is not None:
            return reason
    return None


def _unknown_key_message(full_key: str, valid: Sequence[str], source: str) -> str:
    close = difflib.get_close_matches(full_key, valid, n=1, cutoff=0.6)
    if not close:  # a typo in the node name: match the leaf name inside every node
        leaf = full_key.split(".")[-1]
        by_leaf = {k.split(".")[-1]: k for k in valid}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)]
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown config key {full_key} (from {source}){hint}"


def _flatten(tree: Mapping[str, Any], prefix: str) -> list[str]:
    leaves = []
    for key, value in tree.items():
        full = f"{prefix}.{key}"
        leaves.extend(_flatten(value, full) if isinstance(value, Mapping) else [full])
    return leaves


def _coerce(full_key: str, default: Any, value: Any, source: str) -> Any:
    """Check `value` against the type of `default`, converting where the meaning is unambiguous."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    elif isinstance(default, str) and isinstance(value, str):
        return value
    raise ConfigError(
        f"config key {full_key} expects a {type(default).__name__} (default {default!r}) but got {value!r} "
        f"({type(value).__name__}) from {source}"
    )


def _merge(cfg: CfgNode, updates: Mapping[str, Any], source: str, errors: list[str], prefix: str = "") -> None:
    valid = _all_keys(get_cfg())
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key == BASE_KEY:
            continue
        reason = _removed_reason(full)
        if reason is not None:
            logger.warning("config key %s (from %s) is ignored: %s", full, source, reason)
            continue
        if key not in cfg:
            leaves = _flatten(value, full) if isinstance(value, Mapping) else [full]
            errors.extend(_unknown_key_message(leaf, valid, source) for leaf in leaves)
            continue
        if isinstance(cfg[key], CfgNode):
            if not isinstance(value, Mapping):
                errors.append(f"config key {full} is a group of keys, not a value (from {source})")
                continue
            _merge(cfg[key], value, source, errors, full + ".")
            continue
        try:
            cfg[key] = _coerce(full, cfg[key], value, source)
        except ConfigError as err:
            errors.append(str(err))


def _apply_encoder_variant(cfg: CfgNode, sources: Sequence[Mapping[str, Any]], errors: list[str]) -> None:
    """Set the keys of the ENCODER.VARIANT that the last of ``sources`` naming one asks for (else the default), before
    the sources are merged: keys a source sets override the variant's. An unknown name is left to the validation."""
    variant = cfg.ENCODER.VARIANT
    for source in sources:
        encoder = source.get("ENCODER")
        if isinstance(encoder, Mapping) and "VARIANT" in encoder:
            variant = encoder["VARIANT"]
    if variant in ENCODER_VARIANTS:
        _merge(cfg, {"ENCODER": ENCODER_VARIANTS[variant]}, f"ENCODER.VARIANT {variant}", errors)


def _load_yaml_with_base(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file; a `_BASE_` entry (a path or list of paths, relative to this file) is loaded first and
    overridden key by key."""
    if not path.is_file():
        included = f" (named in {chain[-1]} under {BASE_KEY})" if chain else ""
        raise ConfigError(f"config file {path} does not exist{included}; check the path given to --cfg")
    if path.resolve() in {p.resolve() for p in chain}:
        raise ConfigError(f"config file {path} includes itself through {BASE_KEY}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    bases = data.pop(BASE_KEY, [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        _deep_update(merged, _load_yaml_with_base(path.parent / base, chain + (path,)))
    _deep_update(merged, data)
    return merged


def _deep_update(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _parse_value(text: str) -> Any:
    """A command-line value: a Python literal when it parses as one (1e-3, True, [1, 2], (400, 128)), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _opts_to_dict(opts: Sequence[str]) -> dict[str, Any]:
    if len(opts) % 2:
        raise ConfigError(
            f"command-line overrides must come in KEY VALUE pairs; got an odd count ({len(opts)}): {' '.join(opts)}"
        )
    nested: dict[str, Any] = {}
    for key, text in zip(opts[0::2], opts[1::2]):
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command-line key {key} nests under a value")
        node[leaf] = _parse_value(text) if isinstance(text, str) else text
    return nested


def load_config(
    cfg_file: str | Path | None = None,
    opts: Sequence[str] = (),
    *,
    shard_id: int | None = None,
    num_shards: int | None = None,
) -> CfgNode:
    """Build the validated, frozen config of a run.

    Args:
        cfg_file: YAML file (may inherit with `_BASE_`); None for the defaults alone.
        opts: `KEY VALUE` overrides as on the command line, e.g. ["NUM_GPUS", "0", "SOLVER.BASE_LR", "1e-3"].
        shard_id, num_shards: launcher flags, copied into SHARD_ID / NUM_SHARDS when given.

    Raises:
        ConfigError: naming every unknown key (with the closest valid one), wrong type or impossible combination.
    """
    cfg = get_cfg()
    errors: list[str] = []
    from_file = _load_yaml_with_base(Path(cfg_file)) if cfg_file is not None else {}
    from_command_line = _opts_to_dict(list(opts))
    _apply_encoder_variant(cfg, [from_file, from_command_line], errors)
    _merge(cfg, from_file, str(cfg_file), errors)
    _merge(cfg, from_command_line, "the command line", errors)
    if shard_id is not None:
        cfg.SHARD_ID = int(shard_id)
    if num_shards is not None:
        cfg.NUM_SHARDS = int(num_shards)
    # The tree is complete even when some keys were rejected, so every problem can be reported at once.
    errors.extend(validation_errors(cfg))
    if errors:
        where = f" in {cfg_file}" if cfg_file else ""
        raise ConfigError(f"{len(errors)} config problem(s){where}:\n  - " + "\n  - ".join(errors))
    for warning in validation_warnings(cfg):
        logger.warning("%s", warning)
    cfg.freeze()
    return cfg


def validation_warnings(cfg: CfgNode) -> list[str]:
    """Combinations that run but rarely mean what they say (logged by :func:`load_config`)."""
    warnings = []
    if cfg.TRAIN.ENABLE and cfg.SOLVER.WARMUP_EPOCHS >= cfg.SOLVER.MAX_EPOCH:
        warnings.append(
            f"SOLVER.WARMUP_EPOCHS ({cfg.SOLVER.WARMUP_EPOCHS}) is not shorter than SOLVER.MAX_EPOCH "
            f"({cfg.SOLVER.MAX_EPOCH}): the whole run warms up, on the line from SOLVER.WARMUP_START_LR to the LR at "
            "the end of the warmup, and the schedule never decays (fine for a smoke run; lower WARMUP_EPOCHS otherwise)"
        )
    return warnings


# Every key that names one of a fixed set of values, and the set (owned by playitback.config.choices).
CHOICE_KEYS: tuple[tuple[str, Iterable[str]], ...] = (
    ("MODEL.LOSS_FUNC", choices.LOSS_FUNCS),
    ("DECODER.FUSION", choices.FUSIONS),
    ("DECODER.FUSION_LOC", choices.FUSION_LOCATIONS),
    ("ENCODER.MODE", choices.POOL_MODES),
    ("ENCODER.HEAD_POOL", choices.HEAD_POOLS),
    ("SOLVER.OPTIMIZING_METHOD", choices.OPTIMIZERS),
    ("SOLVER.LR_POLICY", choices.LR_POLICIES),
    ("DATA.ENSEMBLE_METHOD", choices.ENSEMBLE_METHODS),
    ("DATA.FRONTEND", choices.FRONTENDS),
    ("DATA.STORAGE", choices.STORAGE_MODES),
    ("DATA.TRAIN_SAMPLER", choices.TRAIN_SAMPLERS),
    ("AUDIO_DATA.NORM_PER_CLIP", choices.CLIP_NORMS),
    ("AUDIO_DATA.PAD_MODE", choices.PAD_MODES),
    ("AUDIO_DATA.WINDOW_SCALING", choices.WINDOW_SCALINGS),
    ("AUDIO_DATA.FEATURE_STYLE", choices.FEATURE_STYLES),
    ("DATA_LOADER.ON_BAD_FILE", choices.ON_BAD_FILE_POLICIES),
    ("TRAIN.AMP_DTYPE", choices.AMP_DTYPES),
    ("TRAIN.ON_NONFINITE_LOSS", choices.NONFINITE_POLICIES),
    ("TEST.CHECKPOINT_SELECT", choices.CHECKPOINT_SELECTIONS),
    ("TEST.EXIT_POLICY", choices.EXIT_POLICIES),
    ("SOLVER.BASE_LR_SCALE_RULE", choices.LR_SCALE_RULES),
    ("WANDB.MODE", choices.WANDB_MODES),
    ("SALIENCY.READOUT", choices.READOUTS),
    ("SALIENCY.METHOD", registry.SALIENCIES),
    ("ENCODER.NAME", registry.ENCODERS),
    ("SALIENCY.MIL_POOLING", choices.MIL_POOLINGS),
    ("MODEL.COMPILE_BACKEND", choices.COMPILE_BACKENDS),
    ("MODEL.COMPILE_MODE", choices.COMPILE_MODES),
    ("MODEL.REPLAY", choices.REPLAY_SOURCES),
    ("MODEL.REPLAY_RESOLUTION", choices.REPLAY_RESOLUTIONS),
)


def _value(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _choice(errors: list[str], key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        errors.append(f"{key} is {value!r}; choose one of {', '.join(map(repr, allowed))}")


def validation_errors(cfg: CfgNode) -> list[str]:
    """Every impossible value or combination of a merged config (empty when the config can run)."""
    errors: list[str] = []
    _choice(errors, "TRAIN.DATASET", cfg.TRAIN.DATASET.lower(), derived.DATASETS)
    _choice(errors, "TEST.DATASET", cfg.TEST.DATASET.lower(), derived.DATASETS)
    _choice(errors, "ENCODER.VARIANT", cfg.ENCODER.VARIANT, (*ENCODER_VARIANTS, "custom"))
    for key, allowed in CHOICE_KEYS:
        _choice(errors, key, _value(cfg, key), allowed)
    if cfg.DATA.TRAIN_SAMPLER == "uniform" and (cfg.DATA.SAMPLES_PER_EPOCH or cfg.DATA.SAMPLE_WEIGHTS_FILE):
        errors.append("DATA.SAMPLES_PER_EPOCH and DATA.SAMPLE_WEIGHTS_FILE set the balanced sampler; add "
                      "DATA.TRAIN_SAMPLER balanced (the uniform sampler visits every training clip once per epoch)")
    if cfg.DATA.SAMPLES_PER_EPOCH < 0 or cfg.DATA.BALANCE_OFFSET < 0:
        errors.append(f"DATA.SAMPLES_PER_EPOCH ({cfg.DATA.SAMPLES_PER_EPOCH}) and DATA.BALANCE_OFFSET "
                      f"({cfg.DATA.BALANCE_OFFSET}) must be >= 0")
    if cfg.SALIENCY.EVIDENCE_FRAMES < 1 or cfg.SALIENCY.EVIDENCE_FRAMES % 2 == 0:
        errors.append(f"SALIENCY.EVIDENCE_FRAMES is {cfg.SALIENCY.EVIDENCE_FRAMES}; it must be odd and positive "
                      "(frames on each side of a frame, plus the frame)")
    if not 0.0 <= cfg.SALIENCY.BUDGET <= 1.0:
        errors.append(f"SALIENCY.BUDGET is {cfg.SALIENCY.BUDGET}; it is the share of frames to replay, in [0, 1] "
                      "(0: the frames above the mean saliency)")
    if cfg.MODEL.REPLAY == "events" and (not cfg.DATA.EVENTS_FILE or derived.is_encoder_only(cfg)):
        errors.append("MODEL.REPLAY events replays annotated events in PlayItBack: it needs DATA.EVENTS_FILE (a CSV of "
                      "uid, event_start_s, event_stop_s) and MODEL.PLAYBACK of at least 1")
    if cfg.TEST.EXIT_POLICY != "none" and derived.is_encoder_only(cfg):
        errors.append(f"TEST.EXIT_POLICY {cfg.TEST.EXIT_POLICY} stops PlayItBack after a confident playback; the "
                      "encoder alone has one playback: leave TEST.EXIT_POLICY none")
    if not 0.0 <= cfg.TEST.EXIT_THRESHOLD <= 1.0:
        errors.append(f"TEST.EXIT_THRESHOLD is {cfg.TEST.EXIT_THRESHOLD}; it is a confidence, in [0, 1]")
    if cfg.MODEL.COMPILE_MODE != "default" and cfg.MODEL.COMPILE_BACKEND != "inductor":
        errors.append(f"MODEL.COMPILE_MODE {cfg.MODEL.COMPILE_MODE!r} is an inductor mode; set MODEL.COMPILE_BACKEND "
                      f"inductor or MODEL.COMPILE_MODE default (backend {cfg.MODEL.COMPILE_BACKEND!r})")

    if cfg.MODEL.PLAYBACK < 0:
        errors.append(f"MODEL.PLAYBACK is {cfg.MODEL.PLAYBACK}; it counts replays and must be >= 0")
    elif not derived.is_encoder_only(cfg) and cfg.DECODER.DEPTH != cfg.MODEL.PLAYBACK + 1:
        errors.append(
            f"DECODER.DEPTH ({cfg.DECODER.DEPTH}) must equal MODEL.PLAYBACK + 1 ({cfg.MODEL.PLAYBACK + 1}): "
            "the decoder has one layer per playback"
        )
    variant_name = ENCODER_VARIANTS.get(cfg.ENCODER.VARIANT, {}).get("NAME", cfg.ENCODER.NAME)
    if variant_name != cfg.ENCODER.NAME:
        errors.append(f"ENCODER.VARIANT {cfg.ENCODER.VARIANT} is a size of the {variant_name} encoder, but "
                      f"ENCODER.NAME is {cfg.ENCODER.NAME}; choose a variant of {cfg.ENCODER.NAME} "
                      f"({', '.join(v for v, keys in ENCODER_VARIANTS.items() if keys['NAME'] == cfg.ENCODER.NAME)})"
                      " or ENCODER.VARIANT custom")
    if cfg.ENCODER.NAME != "mvit" and (cfg.ENCODER.HEAD_POOL != "mean" or cfg.ENCODER.STEM_CHANNELS):
        errors.append(f"ENCODER.HEAD_POOL and ENCODER.STEM_CHANNELS are keys of the mvit encoder; the "
                      f"{cfg.ENCODER.NAME} encoder pools its own way: leave them at mean and []")
    if cfg.DECODER.INPUT_CHANNELS < 0:
        errors.append(f"DECODER.INPUT_CHANNELS is {cfg.DECODER.INPUT_CHANNELS}; give the encoder's width or 0 (take it "
                      "from the encoder)")
    if cfg.MODEL.MULTITASK:
        if len(cfg.MODEL.MULTITASK_CLASSES) < 2:
            errors.append("MODEL.MULTITASK needs at least two entries in MODEL.MULTITASK_CLASSES")
        if cfg.DATA.MULTI_LABEL:
            errors.append("MODEL.MULTITASK and DATA.MULTI_LABEL cannot both be True")
    if cfg.DATA.MULTI_LABEL and cfg.MODEL.LOSS_FUNC not in ("bce_logit", "bce"):
        errors.append(f"DATA.MULTI_LABEL needs MODEL.LOSS_FUNC bce_logit, not {cfg.MODEL.LOSS_FUNC}")
    if not cfg.DATA.MULTI_LABEL and cfg.MODEL.LOSS_FUNC in ("bce_logit", "bce"):
        errors.append(f"MODEL.LOSS_FUNC {cfg.MODEL.LOSS_FUNC} needs DATA.MULTI_LABEL True (multi-hot labels)")
    if min(derived.class_counts(cfg)) < 1:
        errors.append("class counts (MODEL.NUM_CLASSES or MODEL.MULTITASK_CLASSES) must be positive")
    if cfg.ENCODER.REL_POS_SPATIAL:
        errors.append("ENCODER.REL_POS_SPATIAL True is not supported (spectrogram token grids are not square)")
    if cfg.SALIENCY.NUM_SLOTS < 2:
        errors.append("SALIENCY.NUM_SLOTS must be >= 2 (slot 0 is the positive, slot 1 the negative saliency)")
    if cfg.SALIENCY.READOUT == "attention" and cfg.SALIENCY.ITERS < 2:
        errors.append(f"SALIENCY.ITERS ({cfg.SALIENCY.ITERS}) must be at least 2 with SALIENCY.READOUT attention: the "
                      "readout takes the last iteration's attention, computed before that iteration's GRU and MLP, so "
                      "with one iteration they (and the value projection) get no gradient and DDP fails at its second "
                      "step; use 2 or more, or SALIENCY.READOUT slots")
    elif cfg.SALIENCY.ITERS < 1:
        errors.append("SALIENCY.ITERS must be >= 1")

    if not 0 <= cfg.TRAIN.NOT_LEARNING_MARGIN < 1 or cfg.TRAIN.NOT_LEARNING_EPOCHS < 0:
        errors.append(f"TRAIN.NOT_LEARNING_MARGIN ({cfg.TRAIN.NOT_LEARNING_MARGIN}) must be in [0, 1) and "
                      f"TRAIN.NOT_LEARNING_EPOCHS ({cfg.TRAIN.NOT_LEARNING_EPOCHS}) at least 0")
    if not cfg.AUDIO_DATA.NORM_STD > 0:
        errors.append(f"AUDIO_DATA.NORM_STD ({cfg.AUDIO_DATA.NORM_STD}) must be positive; tools/input_stats.py "
                      "computes it")
    padded_bins = cfg.AUDIO_DATA.NUM_FREQUENCIES + 2 * cfg.ENCODER.PATCH_PADDING[1]
    if cfg.ENCODER.PATCH_KERNEL[1] > padded_bins:
        errors.append(f"ENCODER.PATCH_KERNEL {list(cfg.ENCODER.PATCH_KERNEL)} spans more mel bins than the input has "
                      f"(AUDIO_DATA.NUM_FREQUENCIES {cfg.AUDIO_DATA.NUM_FREQUENCIES} + 2 x ENCODER.PATCH_PADDING "
                      f"{cfg.ENCODER.PATCH_PADDING[1]} = {padded_bins}); a full-band patch takes the bin count")
    if cfg.AUDIO_DATA.FRAMES0 < 8:
        errors.append(f"AUDIO_DATA.FRAMES0 ({cfg.AUDIO_DATA.FRAMES0}) must be at least 8")
    elif cfg.MODEL.PLAYBACK >= 0 and derived.playback_hop(cfg, derived.num_playbacks(cfg) - 1) < 1:
        errors.append(
            f"a {cfg.AUDIO_DATA.CLIP_SECS} s clip at {cfg.AUDIO_DATA.SAMPLING_RATE} Hz has too few samples for "
            f"{derived.num_playbacks(cfg)} playbacks of AUDIO_DATA.FRAMES0 * (i + 1) frames"
        )
    if derived.window_samples(cfg) > cfg.AUDIO_DATA.N_FFT:
        errors.append(
            f"AUDIO_DATA.WINDOW_LENGTH ({cfg.AUDIO_DATA.WINDOW_LENGTH} ms) is longer than AUDIO_DATA.N_FFT "
            f"({cfg.AUDIO_DATA.N_FFT} samples)"
        )

    if cfg.NUM_SHARDS < 1 or not 0 <= cfg.SHARD_ID < cfg.NUM_SHARDS:
        errors.append(f"SHARD_ID ({cfg.SHARD_ID}) must be in [0, NUM_SHARDS ({cfg.NUM_SHARDS}))")
    if cfg.NUM_GPUS < 0:
        errors.append("NUM_GPUS must be >= 0 (0 runs on the CPU)")
    if cfg.DIST_TIMEOUT_SECS <= 0:
        errors.append(f"DIST_TIMEOUT_SECS ({cfg.DIST_TIMEOUT_SECS}) must be > 0 seconds")
    world = derived.world_size(cfg)
    for key in ("TRAIN.BATCH_SIZE", "TEST.BATCH_SIZE"):
        node, leaf = key.split(".")
        batch = cfg[node][leaf]
        if batch < 1 or batch % world:
            errors.append(f"{key} ({batch}) must be a positive multiple of the number of processes ({world})")
    accumulation = cfg.TRAIN.ACCUMULATION_STEPS
    if accumulation < 1:
        errors.append(f"TRAIN.ACCUMULATION_STEPS ({accumulation}) must be >= 1")
    elif cfg.TRAIN.BATCH_SIZE % (world * accumulation):
        errors.append(f"TRAIN.BATCH_SIZE ({cfg.TRAIN.BATCH_SIZE}) must be a multiple of the processes ({world}) times "
                      f"TRAIN.ACCUMULATION_STEPS ({accumulation})")
    if cfg.TEST.NUM_ENSEMBLE_VIEWS < 1:
        errors.append("TEST.NUM_ENSEMBLE_VIEWS must be >= 1")
    if cfg.SOLVER.LR_POLICY == "cosine" and cfg.SOLVER.COSINE_END_LR > derived.base_lr(cfg):
        errors.append(
            f"SOLVER.COSINE_END_LR ({cfg.SOLVER.COSINE_END_LR}) must not exceed SOLVER.BASE_LR ({cfg.SOLVER.BASE_LR})"
        )
    if cfg.SOLVER.LR_POLICY == "steps_with_relative_lrs" and len(cfg.SOLVER.STEPS) != len(cfg.SOLVER.LRS):
        errors.append("SOLVER.STEPS and SOLVER.LRS must have the same length")
    if cfg.SOLVER.MAX_EPOCH < 1:
        errors.append("SOLVER.MAX_EPOCH must be >= 1")
    if cfg.SOLVER.WARMUP_EPOCHS < 0:
        errors.append("SOLVER.WARMUP_EPOCHS must be >= 0")
    if cfg.SOLVER.BASE_LR_SCALE_NUM_SHARDS:
        errors.append(
            "SOLVER.BASE_LR_SCALE_NUM_SHARDS True multiplied the LR by NUM_SHARDS in the original because its "
            "TRAIN.BATCH_SIZE was per machine, so the global batch grew with the machines; here TRAIN.BATCH_SIZE is "
            "the global batch, and the key would scale the LR at an unchanged batch. Set TRAIN.BATCH_SIZE to the global "
            "batch (the original's BATCH_SIZE times NUM_SHARDS) and SOLVER.BASE_LR_BATCH_SIZE to the batch BASE_LR was "
            "tuned for (the original's per-machine BATCH_SIZE): the LR then follows the global batch"
        )
    if cfg.SOLVER.BASE_LR_BATCH_SIZE < 0:
        errors.append("SOLVER.BASE_LR_BATCH_SIZE must be >= 0 (0: BASE_LR as is)")
    if not 0 < cfg.SOLVER.LAYER_DECAY <= 1:
        errors.append(f"SOLVER.LAYER_DECAY ({cfg.SOLVER.LAYER_DECAY}) must be in (0, 1] (1.0: off)")
    if not 0 <= cfg.DATA_LOADER.MAX_BAD_FRACTION <= 1:
        errors.append("DATA_LOADER.MAX_BAD_FRACTION must be in [0, 1]")
    if not 0 <= cfg.DATA_LOADER.MIN_AUDIO_FRACTION <= 1:
        errors.append(f"DATA_LOADER.MIN_AUDIO_FRACTION must be in [0, 1] (0 accepts any length), got "
                      f"{cfg.DATA_LOADER.MIN_AUDIO_FRACTION}")
    if not 0 <= cfg.DATA.MIN_FOUND_FRACTION <= 1:
        errors.append("DATA.MIN_FOUND_FRACTION must be in [0, 1]")
    if cfg.DATA_LOADER.NUM_WORKERS < 0:
        errors.append("DATA_LOADER.NUM_WORKERS must be >= 0")
    return errors


def dump_config(cfg: CfgNode) -> str:
    """The config as YAML text (stored in checkpoints and OUTPUT_DIR/config.yaml)."""
    return cfg.dump()


def config_from_text(text: str) -> CfgNode:
    """A config stored by :func:`dump_config` (e.g. inside a checkpoint), merged onto the current defaults."""
    cfg = get_cfg()
    errors: list[str] = []
    stored = yaml.safe_load(text) or {}
    _apply_encoder_variant(cfg, [stored], errors)
    _merge(cfg, stored, "the stored config", errors)
    if errors:
        raise ConfigError("stored config does not match this version of playitback:\n  - " + "\n  - ".join(errors))
    cfg.freeze()
    return cfg

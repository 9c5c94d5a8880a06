"""The allowed values of every key that names a choice, in one torch-free place.

The modules that implement a choice import its tuple from here (so that a new value is added once), and the config
check (:func:`playitback.config.load.validation_errors`) validates against the same tuples without importing torch.
The encoders and saliencies are registries instead (:mod:`playitback.registry`), which the check reads as they are
when it runs, so that a name registered at run time is valid.
"""
from __future__ import annotations

# DATA, DATA_LOADER, AUDIO_DATA
ENSEMBLE_METHODS = ("sum", "max")
FRONTENDS = ("auto", "workers", "device")
STORAGE_MODES = ("auto", "files", "shards")
TRAIN_SAMPLERS = ("uniform", "balanced")
ON_BAD_FILE_POLICIES = ("auto", "raise", "skip")
CLIP_NORMS = ("none", "mean", "mean_std")
PAD_MODES = ("edge", "zeros")
WINDOW_SCALINGS = ("fixed", "hop")
FEATURE_STYLES = ("librosa", "kaldi")

# ENCODER, SALIENCY, DECODER, MODEL
POOL_MODES = ("conv", "avg", "max")
HEAD_POOLS = ("mean", "max", "attention")
READOUTS = ("attention", "slots")
MIL_POOLINGS = ("linear_softmax", "autopool", "attention")
FUSIONS = ("mean", "adaptive", "adaptive_concat")
FUSION_LOCATIONS = ("features", "predictions")
REPLAY_SOURCES = ("saliency", "events", "random", "none")
REPLAY_RESOLUTIONS = ("fine", "coarse")
LOSS_FUNCS = ("cross_entropy", "soft_cross_entropy", "bce_logit", "bce")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# SOLVER, TRAIN, TEST, WANDB
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_POLICIES = ("cosine", "steps_with_relative_lrs")
LR_SCALE_RULES = ("linear", "sqrt")
AMP_DTYPES = ("float16", "bfloat16")
NONFINITE_POLICIES = ("raise", "skip")
CHECKPOINT_SELECTIONS = ("auto", "best", "last")
EXIT_POLICIES = ("none", "max_prob", "margin")
WANDB_MODES = ("online", "offline")

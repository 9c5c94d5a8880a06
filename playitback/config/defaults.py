"""The config tree: every key a run can set, with its default and one comment.

The keys are those of the original PlayItBack (so its command lines keep working) minus its dead keys, plus keys for
what it hard-coded (playback-0 frames, slot count and iterations, loss weights, rank margin, fusion dropout, SpecAugment
sizes). Values derived from several keys are computed by the pure functions in ``playitback.config.derived`` and never
written back.
"""
from __future__ import annotations

from typing import Any

from fvcore.common.config import CfgNode

_C = CfgNode()

# ---------------------------------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------------------------------
_C.TRAIN = CfgNode()
# Run the training stage.
_C.TRAIN.ENABLE = True
# Dataset of the train and val splits: vggsound | audioset | epickitchens | custom.
_C.TRAIN.DATASET = "vggsound"
# Total batch size over all processes (per process: BATCH_SIZE / world size).
_C.TRAIN.BATCH_SIZE = 64
# Loader batches per optimiser step: each process reads BATCH_SIZE / (world size x ACCUMULATION_STEPS) clips at a
# time and the gradient is their mean, so a global batch larger than the devices hold trains as one batch would.
_C.TRAIN.ACCUMULATION_STEPS = 1
# Validate every EVAL_PERIOD epochs (and after the last one).
_C.TRAIN.EVAL_PERIOD = 10
# Save a checkpoint every CHECKPOINT_PERIOD epochs (and after the last one).
_C.TRAIN.CHECKPOINT_PERIOD = 10
# Resume from the newest valid checkpoint in OUTPUT_DIR/checkpoints when there is one.
_C.TRAIN.AUTO_RESUME = True
# Weights to start from: a PlayItBack checkpoint, an encoder-pretraining checkpoint or a bare MViTv2 checkpoint
# (bare keys load under "encoder.", ImageNet RGB patch kernels are averaged to one channel).
_C.TRAIN.CHECKPOINT_FILE_PATH = ""
# Start at epoch 0 even when TRAIN.CHECKPOINT_FILE_PATH holds an epoch.
_C.TRAIN.CHECKPOINT_EPOCH_RESET = False
# Substrings removed from checkpoint keys before they are matched.
_C.TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN = ()
# Automatic mixed precision in training.
_C.TRAIN.MIXED_PRECISION = True
# AMP data type: float16 (with a GradScaler) or bfloat16 (no scaling needed).
_C.TRAIN.AMP_DTYPE = "float16"
# Non-finite loss: "raise" stops the run naming the step and loss terms; "skip" drops the step and counts it.
_C.TRAIN.ON_NONFINITE_LOSS = "raise"
# Stop after this many iterations per epoch (0: the whole epoch). For smoke tests and benchmarks.
_C.TRAIN.MAX_ITERS_PER_EPOCH = 0
# Warn once (log and metrics.jsonl, split "warning") when the epoch's training loss is still within NOT_LEARNING_MARGIN
# (relative) of its chance level (the loss of predicting the class prior, ln K for K balanced classes) at or after
# epoch NOT_LEARNING_EPOCHS; 0 turns the check off.
_C.TRAIN.NOT_LEARNING_EPOCHS = 3
# Relative distance from the chance-level loss within which the run counts as not learning.
_C.TRAIN.NOT_LEARNING_MARGIN = 0.05

# ---------------------------------------------------------------------------------------------------------------------
# MixUp / CutMix over the batch (all playbacks share one lambda and permutation).
# ---------------------------------------------------------------------------------------------------------------------
_C.MIXUP = CfgNode()
# Mix pairs of clips (and their targets) in training.
_C.MIXUP.ENABLE = False
# Beta(ALPHA, ALPHA) of the MixUp weight.
_C.MIXUP.ALPHA = 0.3
# Beta(CUTMIX_ALPHA, CUTMIX_ALPHA) of the CutMix area (one time x frequency box, the same seconds in every playback).
_C.MIXUP.CUTMIX_ALPHA = 1.0
# Probability that a batch is mixed at all.
_C.MIXUP.PROB = 0.3
# Probability of CutMix instead of MixUp when a batch is mixed.
_C.MIXUP.SWITCH_PROB = 0.5
# Label smoothing of single-label and per-task targets when MixUp is enabled.
_C.MIXUP.LABEL_SMOOTH_VALUE = 0.1

# ---------------------------------------------------------------------------------------------------------------------
# Testing.
# ---------------------------------------------------------------------------------------------------------------------
_C.TEST = CfgNode()
# Run the test stage (after training when both are enabled).
_C.TEST.ENABLE = True
# Dataset of the test split.
_C.TEST.DATASET = "vggsound"
# Total test batch size over all processes.
_C.TEST.BATCH_SIZE = 8
# Checkpoint to evaluate; empty: a checkpoint of OUTPUT_DIR chosen by CHECKPOINT_SELECT.
_C.TEST.CHECKPOINT_FILE_PATH = ""
# Which checkpoint of OUTPUT_DIR to test when TEST.CHECKPOINT_FILE_PATH is empty: best | last | auto (best, but last
# when the validation and test lists are the same file: a best chosen on the test list would inflate its metrics).
_C.TEST.CHECKPOINT_SELECT = "auto"
# Views per clip, uniformly spaced over the clip; their logits are summed (DATA.ENSEMBLE_METHOD).
_C.TEST.NUM_ENSEMBLE_VIEWS = 10
# Also pickle [scores, labels] to OUTPUT_DIR/<SAVE_RESULTS_PATH>.
_C.TEST.SAVE_RESULTS_PATH = ""
# Write OUTPUT_DIR/scores/segments.jsonl: the replayed segments (seconds) of every clip, view and playback.
_C.TEST.SAVE_SEGMENTS = False
# Anytime inference of PlayItBack (docs/anytime.md): a clip stops after the first playback whose prediction is
# confident enough, none | max_prob (largest probability) | margin (gap between the two largest); the test then also
# reports anytime_top1, its mean GMACs per clip and where the clips stopped. tools/anytime.py chooses the threshold on
# the validation list for a target cost.
_C.TEST.EXIT_POLICY = "none"
# The confidence that stops a clip (TEST.EXIT_POLICY), in [0, 1].
_C.TEST.EXIT_THRESHOLD = 0.9
# Autocast validation and testing with TRAIN.AMP_DTYPE (faster on a GPU; metrics can move in the last digits).
_C.TEST.MIXED_PRECISION = False

# ---------------------------------------------------------------------------------------------------------------------
# Model.
# ---------------------------------------------------------------------------------------------------------------------
_C.MODEL = CfgNode()
# Only a name for logs; the architecture follows from PLAYBACK and the ENCODER/DECODER nodes.
_C.MODEL.MODEL_NAME = "PlayItBackX2"
# Classes of a single-task model (309 VGG-Sound, 527 AudioSet).
_C.MODEL.NUM_CLASSES = 400
# Several heads (EPIC-KITCHENS verb and noun); their class counts are MULTITASK_CLASSES.
_C.MODEL.MULTITASK = False
# Class counts of the heads of a multitask model, in order (EPIC-KITCHENS: verbs, nouns).
_C.MODEL.MULTITASK_CLASSES = [97, 300]
# cross_entropy | soft_cross_entropy | bce_logit (multi-label).
_C.MODEL.LOSS_FUNC = "soft_cross_entropy"
# Dropout before the encoder head.
_C.MODEL.DROPOUT_RATE = 0.5
# Freeze the encoder (it then runs in eval mode: no drop path, no dropout).
_C.MODEL.FREEZE_ENCODER = True
# Allow weights that no checkpoint provides: training PlayItBack on a frozen encoder no checkpoint initialised, or
# testing a model whose checkpoint misses weights (smoke tests only; otherwise both are errors).
_C.MODEL.ALLOW_RANDOM_WEIGHTS = False
# Encoder only (no saliency, replay or decoder): the pretraining stage and the baseline.
_C.MODEL.IGNORE_DECODER = False
# Number of replays P; there are P+1 playbacks. 0 means encoder only.
_C.MODEL.PLAYBACK = 3
# Weight of the per-playback auxiliary losses (summed over playbacks).
_C.MODEL.AUX_LOSS_WEIGHT = 0.1
# Weight of the saliency ranking loss.
_C.MODEL.RANK_LOSS_WEIGHT = 0.1
# Margin of the saliency ranking loss (true-class probability, positive minus negative pooling).
_C.MODEL.RANK_MARGIN = 0.05
# Compile the model with torch.compile (training and evaluation).
_C.MODEL.COMPILE = False
# What each playback replays at the next, finer hop: saliency (the salient frames, the method) | events (the annotated
# event frames of DATA.EVENTS_FILE: an oracle that bounds what a perfect saliency could gain) | random (one span per
# clip at a random place, as long as the salient frames: the control for where) | none (nothing: every playback
# re-reads playback 0, the control for the replay itself). The saliency runs and trains in every case.
_C.MODEL.REPLAY = "saliency"
# What the replayed frames show: fine (the next playback's frames, the method) | coarse (playback 0 interpolated onto
# the next playback's time grid: the same spans replayed and stretched the same way without the finer hop, the control
# that isolates the new time resolution; docs/method.md).
_C.MODEL.REPLAY_RESOLUTION = "fine"
# torch.compile backend: inductor (generates kernels) | aot_eager or eager (capture only, to debug a compile problem)
# | cudagraphs.
_C.MODEL.COMPILE_BACKEND = "inductor"
# inductor mode: default | reduce-overhead (CUDA graphs) | max-autotune | max-autotune-no-cudagraphs.
_C.MODEL.COMPILE_MODE = "default"

# ---------------------------------------------------------------------------------------------------------------------
# Temporal saliency, one module per playback.
# ---------------------------------------------------------------------------------------------------------------------
_C.SALIENCY = CfgNode()
# Slots of the slot attention (slot 0 positive, slot 1 negative).
_C.SALIENCY.NUM_SLOTS = 2
# Slot-attention iterations.
_C.SALIENCY.ITERS = 3
# Length of each slot's temporal vector; 0 means AUDIO_DATA.FRAMES0.
_C.SALIENCY.RESOLUTION = 0
# How the slots become a saliency curve: attention (the mean temporal profile of the channels each slot attends to,
# positive minus negative; time is never mixed) or slots (slot 0 minus slot 1, the original's readout). See
# docs/method.md.
_C.SALIENCY.READOUT = "attention"
# What the saliency reads: slots (the 2-slot attention over the encoder's tokens, trained by the pooling contrast of
# MODEL.RANK_MARGIN) | evidence (a frame-level evidence head on the composite spectrogram's local features, trained by
# multiple-instance learning on the clip labels; the default: it is the variant that localises, docs/method.md
# section 7). The dataset recipes of configs/ keep slots, the saliency the original's checkpoints hold.
_C.SALIENCY.METHOD = "evidence"
# MIL pooling of the evidence head over time: linear_softmax | autopool | attention (one class-agnostic weight per
# frame, which is then the saliency: where it replays cannot depend on the predicted class).
_C.SALIENCY.MIL_POOLING = "linear_softmax"
# Hidden width of the evidence head's per-frame features.
_C.SALIENCY.EVIDENCE_DIM = 64
# Frames (odd) one frame's evidence sees; keep it shorter than the events (a wider field lets the evidence fire next
# to the event).
_C.SALIENCY.EVIDENCE_FRAMES = 3
# Share of each composite's frames to replay: a fixed budget (the most salient frames; a differentiable top-k in the
# slots objective). 0: the frames above the per-sample mean saliency (the original; what configs/_base_/common.yaml
# sets).
_C.SALIENCY.BUDGET = 0.15
# Weight of the area prior (the saliency curve's mean should be SALIENCY.BUDGET).
_C.SALIENCY.AREA_WEIGHT = 0.0
# Weight of the contiguity prior (total variation of the saliency curve: few, long runs).
_C.SALIENCY.CONTIGUITY_WEIGHT = 0.0

# ---------------------------------------------------------------------------------------------------------------------
# Decoder (TemPr): one cross-attention per playback.
# ---------------------------------------------------------------------------------------------------------------------
_C.DECODER = CfgNode()
# Fourier bands of the 2-D position encoding (per axis).
_C.DECODER.NUM_FREQ_BANDS = 6
# Highest Fourier frequency is MAX_FREQ / 2.
_C.DECODER.MAX_FREQ = 10.0
# Width of the encoder tokens; 0: the encoder's width (num_features), else it must equal it (checked when the model is
# built).
_C.DECODER.INPUT_CHANNELS = 0
# Latent array: NUM_LATENTS x LATENT_DIM.
_C.DECODER.NUM_LATENTS = 256
# Width of each latent.
_C.DECODER.LATENT_DIM = 512
# Heads and head widths of the cross- and self-attention.
_C.DECODER.CROSS_HEADS = 1
# Heads of the latent self-attention.
_C.DECODER.LATENT_HEADS = 8
# Width of each cross-attention head.
_C.DECODER.CROSS_DIM_HEAD = 64
# Width of each self-attention head.
_C.DECODER.LATENT_DIM_HEAD = 64
# Dropout inside the decoder attention and feed-forward blocks.
_C.DECODER.ATTN_DROPOUT = 0.0
# Dropout inside the decoder feed-forward blocks.
_C.DECODER.FF_DROPOUT = 0.0
# Share the modules of decoder layers 1, 2, ... (layer 0 keeps its own).
_C.DECODER.WEIGHT_TIE_LAYERS = False
# Concatenate the Fourier position encoding of the (time, frequency) grid to the tokens.
_C.DECODER.FOURIER_ENCODE_DATA = True
# Self-attention blocks after each cross-attention.
_C.DECODER.SELF_PER_CROSS_ATTN = 3
# mean | adaptive | adaptive_concat
_C.DECODER.FUSION = "adaptive"
# features | predictions
_C.DECODER.FUSION_LOC = "features"
# Dropout of the adaptive fusions (the original's hard-coded 0.1).
_C.DECODER.FUSION_DROPOUT = 0.1
# Number of decoder layers; must equal MODEL.PLAYBACK + 1 (one layer per playback).
_C.DECODER.DEPTH = 4

# ---------------------------------------------------------------------------------------------------------------------
# Encoder (MViTv2 for one-channel spectrograms). ENCODER.VARIANT sets the keys of ENCODER_VARIANTS (below); the
# defaults of those keys are MViTv2-S, which only ENCODER.VARIANT custom uses as they are.
# ---------------------------------------------------------------------------------------------------------------------
_C.ENCODER = CfgNode()
# The encoder family, a name of playitback/registry.py: mvit (MViTv2) | ast (the Audio Spectrogram Transformer, layout
# of transformers' ASTModel: EMBED_DIM, DEPTH, NUM_HEADS, MLP_RATIO, QKV_BIAS, PATCH_*, DROPPATH_RATE apply).
_C.ENCODER.NAME = "mvit"
# mvitv2_t | mvitv2_s | mvitv2_b | ast_base: the size's keys of ENCODER_VARIANTS (NAME included), under any the config
# file or command line sets; custom: only the keys as set.
_C.ENCODER.VARIANT = "mvitv2_s"
# Pooling of Q/K/V: conv | avg | max.
_C.ENCODER.MODE = "conv"
# Pool the tokens before the Q/K/V projections.
_C.ENCODER.POOL_FIRST = False
# Add a cls token (it attends but is dropped from the output tokens).
_C.ENCODER.CLS_EMBED_ON = False
# Patch embedding convolution (time, frequency).
_C.ENCODER.PATCH_KERNEL = [7, 7]
# Stride of the patch embedding (time, frequency).
_C.ENCODER.PATCH_STRIDE = [4, 4]
# Zero padding of the patch embedding (time, frequency).
_C.ENCODER.PATCH_PADDING = [3, 3]
# Width and heads of the first block.
_C.ENCODER.EMBED_DIM = 96
# Attention heads of the first block (HEAD_MUL multiplies them).
_C.ENCODER.NUM_HEADS = 1
# MLP hidden width over the token width.
_C.ENCODER.MLP_RATIO = 4.0
# Bias in the Q/K/V projection.
_C.ENCODER.QKV_BIAS = True
# Stochastic depth of the last block (rising linearly from 0).
_C.ENCODER.DROPPATH_RATE = 0.1
# Number of blocks.
_C.ENCODER.DEPTH = 16
# [[block, multiplier], ...]
_C.ENCODER.DIM_MUL = [[1, 2.0], [3, 2.0], [14, 2.0]]
# [[block, multiplier], ...]: the heads are multiplied at these blocks.
_C.ENCODER.HEAD_MUL = [[1, 2.0], [3, 2.0], [14, 2.0]]
# [[block, stride_t, stride_f], ...]; empty with POOL_KV_STRIDE_ADAPTIVE set derives them.
_C.ENCODER.POOL_KV_STRIDE = []
# K/V pooling stride (time, frequency) of the first block, divided by each Q stride after it.
_C.ENCODER.POOL_KV_STRIDE_ADAPTIVE = [4, 4]
# [[block, stride_t, stride_f], ...]: Q pooling strides, which shrink the token grid at those blocks.
_C.ENCODER.POOL_Q_STRIDE = [[i, 2, 2] if i in (1, 3, 14) else [i, 1, 1] for i in range(16)]
# Kernel of the Q/K/V pooling.
_C.ENCODER.POOL_KVQ_KERNEL = (3, 3)
# Learned absolute position embedding (fixes the input length to FRAMES0).
_C.ENCODER.USE_ABS_POS = False
# Relative position is not supported (spectrogram grids are not square); only False is accepted.
_C.ENCODER.REL_POS_SPATIAL = False
# Add the pooled queries to the attention output (MViTv2).
_C.ENCODER.RESIDUAL_POOLING = True
# Grow the width inside the attention (MViTv2) rather than in the MLP (MViTv1).
_C.ENCODER.DIM_MUL_IN_ATT = True
# How the head pools the output tokens: mean (MViTv2) | max (per channel: a short event keeps its strength in a long
# clip) | attention (softmax weights from a learned linear score per token). See docs/method.md section 8.
_C.ENCODER.HEAD_POOL = "mean"
# Widths of a stem of 3x3 convolutions (stride 1, GELU) before the patch embedding, e.g. [16, 32]; empty: none (the
# MViTv2 patchify stem alone). Early convolutions: Xiao et al. 2021; docs/method.md section 8.
_C.ENCODER.STEM_CHANNELS = []



def _mvitv2(depth: int, stage_starts: tuple[int, ...], drop_path_rate: float) -> dict[str, Any]:
    """The ENCODER keys of an MViTv2 size: width and heads double and the token grid halves (query stride 2x2) at
    the first block of stages 2, 3 and 4. Every block is listed in POOL_Q_STRIDE (stride 1 outside the stage starts),
    so each block pools its queries and the state-dict keys are those of the original checkpoints."""
    return {
        "NAME": "mvit", "DEPTH": depth, "DROPPATH_RATE": drop_path_rate, "EMBED_DIM": 96, "NUM_HEADS": 1,
        "DIM_MUL": [[i, 2.0] for i in stage_starts], "HEAD_MUL": [[i, 2.0] for i in stage_starts],
        "POOL_Q_STRIDE": [[i, 2, 2] if i in stage_starts else [i, 1, 1] for i in range(depth)],
        "POOL_KV_STRIDE_ADAPTIVE": [4, 4], "POOL_KVQ_KERNEL": (3, 3),
    }


#: The sizes ENCODER.VARIANT selects: the MViTv2 of the paper (stages of 1-2-5-2, 1-2-11-2 and 2-3-16-3 blocks) and
#: AST-Base as on the Hugging Face hub (ASTConfig's defaults: 16x16 patches at stride 10, 12 layers of width 768).
ENCODER_VARIANTS: dict[str, dict[str, Any]] = {
    "mvitv2_t": _mvitv2(10, (1, 3, 8), 0.1),
    "mvitv2_s": _mvitv2(16, (1, 3, 14), 0.1),
    "mvitv2_b": _mvitv2(24, (2, 5, 21), 0.3),
    "ast_base": {"NAME": "ast", "EMBED_DIM": 768, "DEPTH": 12, "NUM_HEADS": 12, "MLP_RATIO": 4.0, "QKV_BIAS": True,
                 "PATCH_KERNEL": [16, 16], "PATCH_STRIDE": [10, 10], "PATCH_PADDING": [0, 0], "DROPPATH_RATE": 0.0},
}

# ---------------------------------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------------------------------
_C.DATA = CfgNode()
# Multi-hot labels and binary cross-entropy (AudioSet).
_C.DATA.MULTI_LABEL = False
# How test views are combined: sum | max (of logits).
_C.DATA.ENSEMBLE_METHOD = "sum"
# Where the spectrogram pyramid is computed: auto (device on GPU, workers on CPU) | workers | device.
_C.DATA.FRONTEND = "auto"
# Allow loading annotation pickles that need more than the pandas/numpy classes the safe loader accepts.
_C.DATA.ALLOW_UNSAFE_PICKLE = False
# CSV of annotated event spans (uid, event_start_s, event_stop_s): batches then carry each crop's event frames.
_C.DATA.EVENTS_FILE = ""
# Where the audio is read from: files (one file per clip, or the EPIC-KITCHENS HDF5) | shards (a pack folder written
# by tools/pack_audio.py, given as the dataset's audio location) | auto (shards when that location holds a pack).
_C.DATA.STORAGE = "auto"
# Training sampler: uniform (a shuffle of the training clips per epoch) | balanced (SAMPLES_PER_EPOCH draws with
# replacement, clip weights from the label counts: docs/method.md#class-balanced-sampling-playitbackdatasampler).
_C.DATA.TRAIN_SAMPLER = "uniform"
# Draws per epoch of the balanced sampler; 0: as many as there are training clips.
_C.DATA.SAMPLES_PER_EPOCH = 0
# Balanced weights: a clip weighs the sum over its labels of 1 / (clips with that label + BALANCE_OFFSET).
_C.DATA.BALANCE_OFFSET = 100.0
# Balanced sampler weights from a CSV instead (columns uid,weight; or one weight per line in training-list order).
_C.DATA.SAMPLE_WEIGHTS_FILE = ""
# Check at start which listed clips have their audio; absent ones are left out, logged as "N of M clips found" and
# listed in OUTPUT_DIR/missing_<split>.txt.
_C.DATA.CHECK_FILES = True
# Stop at start when fewer than this fraction of a split's listed clips have their audio.
_C.DATA.MIN_FOUND_FRACTION = 0.5

_C.AUDIO_DATA = CfgNode()
# Rate the audio is read at (files at another rate are resampled).
_C.AUDIO_DATA.SAMPLING_RATE = 24000
# Crop length in seconds.
_C.AUDIO_DATA.CLIP_SECS = 1.279
# STFT window in milliseconds (Hann, zero-padded to N_FFT).
_C.AUDIO_DATA.WINDOW_LENGTH = 10
# The window of the finer playbacks: "fixed" keeps WINDOW_LENGTH at every playback (the original); "hop" shortens it
# with the hop (WINDOW_LENGTH / (i + 1) at playback i), so a finer playback also resolves finer time structure.
_C.AUDIO_DATA.WINDOW_SCALING = "fixed"
# FFT size (sets the bin spacing).
_C.AUDIO_DATA.N_FFT = 2048
# How a frame becomes a log-mel: librosa (centred Hann frames, magnitude, HTK mel, log(mel + 1e-6): the original) |
# kaldi (Kaldi's fbank as the Audio Spectrogram Transformer's ASTFeatureExtractor computes it: frames from t * hop,
# mean removed, pre-emphasis, power, Kaldi mel bands from 20 Hz; with WINDOW_LENGTH 25, N_FFT 512 and a 10 ms hop).
_C.AUDIO_DATA.FEATURE_STYLE = "librosa"
# Mel bands (HTK, no normalisation).
_C.AUDIO_DATA.NUM_FREQUENCIES = 128
# Frames of playback 0 (T0); playback i has T0 * (i + 1) frames over the same crop.
_C.AUDIO_DATA.FRAMES0 = 400
# The encoder standardises every log-mel it reads: (x - NORM_MEAN) / NORM_STD, with the mean and standard deviation of
# the training set's playback-0 log-mels (tools/input_stats.py prints them). 0 and 1 leave the input as it is.
_C.AUDIO_DATA.NORM_MEAN = 0.0
# Standard deviation that divides every log-mel value (after NORM_MEAN is subtracted).
_C.AUDIO_DATA.NORM_STD = 1.0
# Then standardise each log-mel the encoder reads by its own statistics over time and frequency: none | mean (subtract
# the clip's mean: its recording level, an additive offset of a log-mel) | mean_std (and divide by its standard
# deviation). See docs/method.md section 8.
_C.AUDIO_DATA.NORM_PER_CLIP = "none"
# Frames after the end of a segment shorter than the crop: edge (repeat the last frame, as auditory-slow-fast's EPIC
# loader and the original's short-audio path) | zeros (the log-mel of silence, ln(1e-6) in every band).
_C.AUDIO_DATA.PAD_MODE = "edge"

_C.SPEC_AUGMENT = CfgNode()
# SpecAugment in training (per playback): time warp, frequency masks, time masks, in frames and bins.
_C.SPEC_AUGMENT.ENABLE = True
# Largest time-warp shift, in frames (0: no warp).
_C.SPEC_AUGMENT.TIME_WARP = 5
# Widest frequency mask, in mel bins.
_C.SPEC_AUGMENT.FREQ_MASK = 27
# Frequency masks per spectrogram.
_C.SPEC_AUGMENT.NUM_FREQ_MASKS = 2
# Widest time mask, in frames.
_C.SPEC_AUGMENT.TIME_MASK = 25
# Time masks per spectrogram.
_C.SPEC_AUGMENT.NUM_TIME_MASKS = 2

_C.DATA_LOADER = CfgNode()
# DataLoader worker processes per training process.
_C.DATA_LOADER.NUM_WORKERS = 8
# Pinned host memory for faster copies to the GPU.
_C.DATA_LOADER.PIN_MEMORY = True
# A file that is listed and present but cannot be decoded: raise | skip (in training replaced by another item, in
# val/test left out; counted and logged to OUTPUT_DIR/bad_files.txt) | auto (skip in training, raise in val/test).
_C.DATA_LOADER.ON_BAD_FILE = "auto"
# Stop when more than this fraction of an epoch's training items could not be decoded (absent files are left out at
# start, see DATA.CHECK_FILES).
_C.DATA_LOADER.MAX_BAD_FRACTION = 0.01
# A file that decodes to less than this fraction of the audio its annotation asks for (its segment, or
# AUDIO_DATA.CLIP_SECS when the annotation runs to the end of the file) is a bad file of kind "short" (a partial
# download, a cut file), handled as ON_BAD_FILE says; 0 accepts any length (shorter audio is padded with silence).
_C.DATA_LOADER.MIN_AUDIO_FRACTION = 0.5

# ---------------------------------------------------------------------------------------------------------------------
# Datasets.
# ---------------------------------------------------------------------------------------------------------------------
_C.EPICKITCHENS = CfgNode()
# The HDF5 file: one 1-D dataset per video_id, attribute "sample_rate".
_C.EPICKITCHENS.AUDIO_DATA_FILE = ""
# Rate of HDF5 recordings without a sample_rate attribute (0: assume AUDIO_DATA.SAMPLING_RATE and check it against
# the annotations; auditory-slow-fast's file is 24000).
_C.EPICKITCHENS.AUDIO_SAMPLE_RATE = 0
# Folder of the annotation lists below.
_C.EPICKITCHENS.ANNOTATIONS_DIR = ""
# Training annotations (.csv or the original .pkl) in ANNOTATIONS_DIR.
_C.EPICKITCHENS.TRAIN_LIST = "EPIC_100_train.csv"
# Validation annotations in ANNOTATIONS_DIR.
_C.EPICKITCHENS.VAL_LIST = "EPIC_100_validation.csv"
# Test annotations in ANNOTATIONS_DIR.
_C.EPICKITCHENS.TEST_LIST = "EPIC_100_validation.csv"
# Train on the train and validation lists together.
_C.EPICKITCHENS.TRAIN_PLUS_VAL = False
# Name of the scores file written by the test.
_C.EPICKITCHENS.TEST_SPLIT = "validation"

_C.VGGSOUND = CfgNode()
# Audio root: <AUDIO_DATA_DIR>/<class name>/<clip><AUDIO_EXT>.
_C.VGGSOUND.AUDIO_DATA_DIR = ""
# Folder of the annotation lists below.
_C.VGGSOUND.ANNOTATIONS_DIR = ""
# Extension of the audio files.
_C.VGGSOUND.AUDIO_EXT = ".wav"
# Training annotations (.csv or the original .pkl) in ANNOTATIONS_DIR.
_C.VGGSOUND.TRAIN_LIST = "train.csv"
# Validation annotations in ANNOTATIONS_DIR.
_C.VGGSOUND.VAL_LIST = "test.csv"
# Test annotations in ANNOTATIONS_DIR.
_C.VGGSOUND.TEST_LIST = "test.csv"
# Class names, one per line (line number = id), in ANNOTATIONS_DIR; when absent, the train list's ids (or its sorted
# names). Every split uses this one map; a split whose stored ids disagree is an error.
_C.VGGSOUND.CLASSES_FILE = "classes.txt"

_C.AUDIOSET = CfgNode()
# Audio root: <AUDIO_DATA_DIR>/<clip><AUDIO_EXT> (flat).
_C.AUDIOSET.AUDIO_DATA_DIR = ""
# Folder of the annotation lists below.
_C.AUDIOSET.ANNOTATIONS_DIR = ""
# Extension of the audio files.
_C.AUDIOSET.AUDIO_EXT = ".flac"
# Training annotations (.csv or the original .pkl) in ANNOTATIONS_DIR.
_C.AUDIOSET.TRAIN_LIST = "as2m_train.csv"
# Validation annotations in ANNOTATIONS_DIR.
_C.AUDIOSET.VAL_LIST = "test.csv"
# Test annotations in ANNOTATIONS_DIR.
_C.AUDIOSET.TEST_LIST = "test.csv"

# Your own dataset: TRAIN.DATASET custom. Lists are project CSVs (tools/prepare_annotations.py --from-folders) or CSVs
# with the columns file (path under AUDIO_DATA_DIR, with its extension) and label (or labels, joined with ";").
_C.CUSTOM = CfgNode()
# Audio root; the file column of the lists is relative to it.
_C.CUSTOM.AUDIO_DATA_DIR = ""
# Folder of the annotation lists below.
_C.CUSTOM.ANNOTATIONS_DIR = ""
# Appended to each list entry's path (empty when the lists carry the extension).
_C.CUSTOM.AUDIO_EXT = ""
# Training list (CSV) in ANNOTATIONS_DIR.
_C.CUSTOM.TRAIN_LIST = "train.csv"
# Validation list (CSV) in ANNOTATIONS_DIR.
_C.CUSTOM.VAL_LIST = "test.csv"
# Test list (CSV) in ANNOTATIONS_DIR.
_C.CUSTOM.TEST_LIST = "test.csv"
# Class names, one per line (line number = id), in ANNOTATIONS_DIR; when absent, the train list's ids (or its sorted
# names). Every split uses this one map.
_C.CUSTOM.CLASSES_FILE = "classes.txt"

# ---------------------------------------------------------------------------------------------------------------------
# Optimisation.
# ---------------------------------------------------------------------------------------------------------------------
_C.SOLVER = CfgNode()
# Peak learning rate (after warmup).
_C.SOLVER.BASE_LR = 0.1
# cosine | steps_with_relative_lrs
_C.SOLVER.LR_POLICY = "cosine"
# Learning rate at the end of the cosine.
_C.SOLVER.COSINE_END_LR = 1e-4
# steps_with_relative_lrs: the epochs where each step starts (ascending, the first 0).
_C.SOLVER.STEPS = []
# steps_with_relative_lrs: the multiplier of BASE_LR for each step of STEPS (one entry per step).
_C.SOLVER.LRS = []
# Epochs of training.
_C.SOLVER.MAX_EPOCH = 300
# SGD momentum.
_C.SOLVER.MOMENTUM = 0.9
# SGD dampening.
_C.SOLVER.DAMPENING = 0.0
# Nesterov momentum for SGD.
_C.SOLVER.NESTEROV = True
# Weight decay (never on 1-D parameters and biases when ZERO_WD_1D_PARAM).
_C.SOLVER.WEIGHT_DECAY = 1e-4
# Linear warmup from WARMUP_START_LR over WARMUP_EPOCHS (fractional), per iteration; a run shorter than its warmup
# ends on the warmup line (a warning says so).
_C.SOLVER.WARMUP_EPOCHS = 0.0
# Learning rate at the first iteration of the warmup.
_C.SOLVER.WARMUP_START_LR = 1e-8
# sgd | adam | adamw
_C.SOLVER.OPTIMIZING_METHOD = "sgd"
# The global batch BASE_LR is tuned for: the LR is BASE_LR * TRAIN.BATCH_SIZE / BASE_LR_BATCH_SIZE (0: BASE_LR as is).
_C.SOLVER.BASE_LR_BATCH_SIZE = 0
# How the LR follows the batch when BASE_LR_BATCH_SIZE is set: linear (Goyal et al., SGD) | sqrt (common for AdamW).
_C.SOLVER.BASE_LR_SCALE_RULE = "linear"
# The original's switch (LR times NUM_SHARDS, its batch being per machine); only False is accepted: the batch is global
# here, use BASE_LR_BATCH_SIZE.
_C.SOLVER.BASE_LR_SCALE_NUM_SHARDS = False
# Layer-wise LR decay of a fine-tuned MViTv2 encoder (MAE/MViTv2 recipes): block i of D gets LAYER_DECAY^(D - i), the
# patch embedding LAYER_DECAY^(D + 1), the final norm, head and everything after the encoder 1 (1.0: off).
_C.SOLVER.LAYER_DECAY = 1.0
# The cosine starts after the warmup.
_C.SOLVER.COSINE_AFTER_WARMUP = True
# No weight decay on 1-D parameters (norms, biases).
_C.SOLVER.ZERO_WD_1D_PARAM = True
# Clip every gradient element to [-CLIP_GRAD_VAL, CLIP_GRAD_VAL] (None: off).
_C.SOLVER.CLIP_GRAD_VAL = None
# Clip the global L2 norm of the gradients to this value (None: off).
_C.SOLVER.CLIP_GRAD_L2NORM = None

# ---------------------------------------------------------------------------------------------------------------------
# Logging.
# ---------------------------------------------------------------------------------------------------------------------
_C.TENSORBOARD = CfgNode()
# Write TensorBoard scalars.
_C.TENSORBOARD.ENABLE = False
# Default: OUTPUT_DIR/runs-<TRAIN.DATASET>.
_C.TENSORBOARD.LOG_DIR = ""

_C.WANDB = CfgNode()
# Log to Weights & Biases (pip install wandb); RUN_ID resumes a run.
_C.WANDB.ENABLE = False
# Run id to resume a Weights & Biases run (empty: a new run).
_C.WANDB.RUN_ID = ""
# Weights & Biases project name.
_C.WANDB.PROJECT = "playitback"
# online | offline (offline needs no network; sync later with `wandb sync`).
_C.WANDB.MODE = "online"

# ---------------------------------------------------------------------------------------------------------------------
# Run.
# ---------------------------------------------------------------------------------------------------------------------
# Processes (GPUs) per machine; 0 runs on the CPU with the gloo backend.
_C.NUM_GPUS = 1
# Machines in the job, and this machine's index (or --num_shards / --shard_id).
_C.NUM_SHARDS = 1
# This machine's index among NUM_SHARDS (or --shard_id).
_C.SHARD_ID = 0
# Checkpoints, logs, metrics.jsonl and scores go here.
_C.OUTPUT_DIR = "./tmp"
# Seed of everything (each process adds its rank).
_C.RNG_SEED = 1
# Iterations between training log lines.
_C.LOG_PERIOD = 10
# Log the parameter counts at start.
_C.LOG_MODEL_INFO = True
# Backend on GPU; the CPU always uses gloo.
_C.DIST_BACKEND = "nccl"
# Seconds a collective (gradient all-reduce, barrier, gather) waits for the other processes before this process stops
# with an error: the bound on how long a job hangs when one of its processes is stuck. A process that dies is noticed
# at once (its connections close); the default is torch's.
_C.DIST_TIMEOUT_SECS = 1800

# Keys of the original that did nothing (or nothing correct). A YAML of the original that sets them still loads: they
# are ignored with a warning instead of failing as unknown keys.
REMOVED_KEYS: dict[str, str] = {
    "BN": "the model has no BatchNorm layers",
    "DATA.INPUT_CHANNEL_NUM": "never read",
    "DATA.PATH_TO_DATA_DIR": "use <DATASET>.ANNOTATIONS_DIR",
    "DATA_LOADER.ENABLE_MULTI_THREAD_DECODE": "never read",
    "DATA_LOADER.TRAIN_CROP_SIZE": "replaced by AUDIO_DATA.FRAMES0 (the playback-0 frame count)",
    "DATA_LOADER.TEST_CROP_SIZE": "replaced by AUDIO_DATA.FRAMES0 (the playback-0 frame count)",
    "AUDIO_DATA.HOP_LENGTH": "the hop of playback i is derived: clip samples / (FRAMES0 * (i + 1))",
    "AUDIO_DATA.NUM_FRAMES": "the hop of playback i is derived: clip samples / (FRAMES0 * (i + 1))",
    "MODEL.PLAYBACK_WEIGHTS": "never read; see MODEL.AUX_LOSS_WEIGHT",
    "MODEL.FC_INIT_STD": "never read",
    "MODEL.HEAD_ACT": "models return logits; activations are applied by the loss and metrics",
    "DECODER.FINAL_CLASSIFIER_HEAD": "the decoder always has its classifier",
    "ENCODER.ZERO_DECAY_POS_CLS": "position and cls embeddings never get weight decay",
    "ENCODER.REL_POS_ZERO_INIT": "relative position is not supported",
    "ENCODER.RETURN_EMBD": "internal switch of the original",
    "ENCODER.RETURN_EMBD_ONLY": "internal switch of the original",
    "SOLVER.GAMMA": "never read",
    "SOLVER.STEP_SIZE": "never read",
    "SOLVER.WARMUP_FACTOR": "never read",
    "TENSORBOARD.PREDICTIONS_PATH": "confusion matrices and histograms are not ported",
    "TENSORBOARD.CLASS_NAMES_PATH": "confusion matrices and histograms are not ported",
    "TENSORBOARD.CATEGORIES_PATH": "confusion matrices and histograms are not ported",
    "TENSORBOARD.CONFUSION_MATRIX": "confusion matrices are not ported",
    "TENSORBOARD.HISTOGRAM": "histograms are not ported",
}


def get_cfg() -> CfgNode:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()

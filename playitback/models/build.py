"""build_model: the only place where model code meets the config."""
from __future__ import annotations

import torch
from fvcore.common.config import CfgNode
from torch import Tensor, nn

from playitback.config import derived
from playitback.models.evidence import FrameEvidence
from playitback.models.mvit import MViT
from playitback.models.playitback import EncoderClassifier, PlayItBack
from playitback.models.saliency import TemporalSaliency
from playitback.models.tempr import TemPr


def example_playbacks(cfg: CfgNode, batch: int = 1, device: torch.device | str | None = None,
                      generator: torch.Generator | None = None) -> list[Tensor]:
    """Standard-normal model inputs shaped as the dataset makes them, for tracing, FLOP counts and benchmarks: S
    tensors [batch, T0 * (i + 1), F] (drawn on the CPU with `generator`, then moved to `device`)."""
    frames0, bins = cfg.AUDIO_DATA.FRAMES0, cfg.AUDIO_DATA.NUM_FREQUENCIES
    return [torch.randn(batch, frames0 * (i + 1), bins, generator=generator).to(device)
            for i in range(derived.num_playbacks(cfg))]


def build_encoder(cfg: CfgNode) -> MViT:
    """The MViTv2 encoder of ENCODER.* with one head per task."""
    enc = cfg.ENCODER
    return MViT(
        num_classes=derived.class_counts(cfg),
        embed_dim=enc.EMBED_DIM,
        num_heads=enc.NUM_HEADS,
        depth=enc.DEPTH,
        mlp_ratio=enc.MLP_RATIO,
        qkv_bias=enc.QKV_BIAS,
        drop_path_rate=enc.DROPPATH_RATE,
        dropout_rate=cfg.MODEL.DROPOUT_RATE,
        input_size=(cfg.AUDIO_DATA.FRAMES0, cfg.AUDIO_DATA.NUM_FREQUENCIES),
        patch_kernel=enc.PATCH_KERNEL,
        patch_stride=enc.PATCH_STRIDE,
        patch_padding=enc.PATCH_PADDING,
        dim_mul=enc.DIM_MUL,
        head_mul=enc.HEAD_MUL,
        pool_q_stride=enc.POOL_Q_STRIDE,
        pool_kv_stride=enc.POOL_KV_STRIDE,
        pool_kv_stride_adaptive=enc.POOL_KV_STRIDE_ADAPTIVE,
        pool_kvq_kernel=enc.POOL_KVQ_KERNEL,
        mode=enc.MODE,
        pool_first=enc.POOL_FIRST,
        residual_pooling=enc.RESIDUAL_POOLING,
        dim_mul_in_att=enc.DIM_MUL_IN_ATT,
        use_abs_pos=enc.USE_ABS_POS,
        cls_embed_on=enc.CLS_EMBED_ON,
        input_mean=cfg.AUDIO_DATA.NORM_MEAN,
        input_std=cfg.AUDIO_DATA.NORM_STD,
        head_pool=enc.HEAD_POOL,
        stem_channels=enc.STEM_CHANNELS,
        clip_norm=cfg.AUDIO_DATA.NORM_PER_CLIP,
    )


def build_decoder(cfg: CfgNode, input_dim: int) -> TemPr:
    """The TemPr decoder of DECODER.*: one layer per playback."""
    dec = cfg.DECODER
    return TemPr(
        num_playbacks=derived.num_playbacks(cfg),
        input_dim=input_dim,
        num_classes=derived.class_counts(cfg),
        num_freq_bands=dec.NUM_FREQ_BANDS,
        max_freq=dec.MAX_FREQ,
        fourier_encode_data=dec.FOURIER_ENCODE_DATA,
        num_latents=dec.NUM_LATENTS,
        latent_dim=dec.LATENT_DIM,
        cross_heads=dec.CROSS_HEADS,
        latent_heads=dec.LATENT_HEADS,
        cross_dim_head=dec.CROSS_DIM_HEAD,
        latent_dim_head=dec.LATENT_DIM_HEAD,
        attn_dropout=dec.ATTN_DROPOUT,
        ff_dropout=dec.FF_DROPOUT,
        weight_tie_layers=dec.WEIGHT_TIE_LAYERS,
        self_per_cross_attn=dec.SELF_PER_CROSS_ATTN,
        fusion=dec.FUSION,
        fusion_loc=dec.FUSION_LOC,
        fusion_dropout=dec.FUSION_DROPOUT,
    )


def build_saliency(cfg: CfgNode, token_dim: int) -> TemporalSaliency | FrameEvidence:
    """One playback's saliency of SALIENCY.*: the slot attention over the encoder tokens, or the frame-evidence head."""
    sal = cfg.SALIENCY
    if sal.METHOD == "evidence":
        return FrameEvidence(cfg.AUDIO_DATA.NUM_FREQUENCIES, derived.class_counts(cfg), width=sal.EVIDENCE_DIM,
                             pooling=sal.MIL_POOLING, receptive_frames=sal.EVIDENCE_FRAMES)
    return TemporalSaliency(token_dim=token_dim, frames0=cfg.AUDIO_DATA.FRAMES0,
                            resolution=derived.saliency_resolution(cfg), num_slots=sal.NUM_SLOTS, iters=sal.ITERS,
                            readout=sal.READOUT)


def build_model(cfg: CfgNode) -> nn.Module:
    """PlayItBack (MODEL.PLAYBACK >= 1) or the encoder alone (PLAYBACK 0 or MODEL.IGNORE_DECODER), on the CPU.

    The engine moves it to the device and wraps it for distributed training.
    """
    encoder = build_encoder(cfg)
    if derived.is_encoder_only(cfg):
        return EncoderClassifier(encoder, freeze_backbone=cfg.MODEL.FREEZE_ENCODER)
    saliency = [build_saliency(cfg, encoder.num_features) for _ in range(derived.num_playbacks(cfg))]
    return PlayItBack(encoder, saliency, build_decoder(cfg, encoder.num_features),
                      freeze_encoder=cfg.MODEL.FREEZE_ENCODER,
                      hops=[derived.playback_hop(cfg, i) for i in range(derived.num_playbacks(cfg))],
                      replay_source=cfg.MODEL.REPLAY, budget=cfg.SALIENCY.BUDGET,
                      replay_resolution=cfg.MODEL.REPLAY_RESOLUTION)

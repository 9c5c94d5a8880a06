"""build_model: the only place where model code meets the config."""
from __future__ import annotations

import torch
from fvcore.common.config import CfgNode
from torch import Tensor, nn

from playitback.config import ConfigError, derived
from playitback.models.encoder import Encoder
from playitback.models.playitback import EncoderClassifier, PlayItBack
from playitback.models.saliency_interface import Saliency
from playitback.models.tempr import TemPr
from playitback.registry import ENCODERS, SALIENCIES, resolve


def example_playbacks(cfg: CfgNode, batch: int = 1, device: torch.device | str | None = None,
                      generator: torch.Generator | None = None) -> list[Tensor]:
    """Standard-normal model inputs shaped as the dataset makes them, for tracing, FLOP counts and benchmarks: S
    tensors [batch, T0 * (i + 1), F] (drawn on the CPU with `generator`, then moved to `device`)."""
    frames0, bins = cfg.AUDIO_DATA.FRAMES0, cfg.AUDIO_DATA.NUM_FREQUENCIES
    return [torch.randn(batch, frames0 * (i + 1), bins, generator=generator).to(device)
            for i in range(derived.num_playbacks(cfg))]


def build_encoder(cfg: CfgNode) -> Encoder:
    """The encoder registered as ENCODER.NAME (:mod:`playitback.registry`), built from its config keys, with one head
    per task."""
    return resolve(ENCODERS, cfg.ENCODER.NAME, "ENCODER.NAME").from_config(cfg)


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


def build_saliency(cfg: CfgNode, token_dim: int) -> Saliency:
    """One playback's saliency: the class registered as SALIENCY.METHOD (:mod:`playitback.registry`), built from
    SALIENCY.* for encoder tokens of width ``token_dim``."""
    return saliency_class(cfg).from_config(cfg, token_dim)


def saliency_class(cfg: CfgNode) -> type[Saliency]:
    """The saliency class of SALIENCY.METHOD (its objective and declared output fields, without building it)."""
    return resolve(SALIENCIES, cfg.SALIENCY.METHOD, "SALIENCY.METHOD")


def _check_decoder_width(cfg: CfgNode, encoder: Encoder) -> None:
    if cfg.DECODER.INPUT_CHANNELS and cfg.DECODER.INPUT_CHANNELS != encoder.num_features:
        raise ConfigError(f"DECODER.INPUT_CHANNELS ({cfg.DECODER.INPUT_CHANNELS}) must equal the width of the "
                          f"{cfg.ENCODER.NAME} encoder's tokens ({encoder.num_features}); set it to "
                          f"{encoder.num_features}, or 0 to take the encoder's width")


def build_model(cfg: CfgNode) -> nn.Module:
    """PlayItBack (MODEL.PLAYBACK >= 1) or the encoder alone (PLAYBACK 0 or MODEL.IGNORE_DECODER), on the CPU.

    The engine moves it to the device and wraps it for distributed training.
    """
    encoder = build_encoder(cfg)
    if derived.is_encoder_only(cfg):
        return EncoderClassifier(encoder, freeze_backbone=cfg.MODEL.FREEZE_ENCODER)
    _check_decoder_width(cfg, encoder)
    saliency = [build_saliency(cfg, encoder.num_features) for _ in range(derived.num_playbacks(cfg))]
    return PlayItBack(encoder, saliency, build_decoder(cfg, encoder.num_features),
                      freeze_encoder=cfg.MODEL.FREEZE_ENCODER,
                      hops=[derived.playback_hop(cfg, i) for i in range(derived.num_playbacks(cfg))],
                      replay_source=cfg.MODEL.REPLAY, budget=cfg.SALIENCY.BUDGET,
                      replay_resolution=cfg.MODEL.REPLAY_RESOLUTION)

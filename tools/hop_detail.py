#!/usr/bin/env python3
"""How much new time detail each finer playback holds: the share of its variation over time that playback 0,
linearly interpolated onto the finer time grid, does not predict.

For playback i >= 1 of every test clip, with X_i its log-mel [T_i, F] and C_i the log-mel at playback 0's hop with
playback i's window, read on playback i's time grid by linear interpolation (``playitback.models.replay.
coarse_playback``, how the study's "coarse" control stretches playback 0)::

    detail_i = sum_t,f (X_i - C_i)^2 / sum_t,f (X_i - mean_t X_i)^2

pooled over clips, over all frames and over the frames inside the annotated events (DATA.EVENTS_FILE). With the same
window on both sides the figure isolates the finer hop: 0 means playback i shows nothing that sampling its own
spectrogram at playback 0's hop would not already give. It is printed for each AUDIO_DATA.WINDOW_SCALING, so that a
fixed window (which smooths every playback alike, and which a finer hop can only oversample) and a window that
shrinks with the hop can be compared. Part of a shorter window's detail is estimation noise (fewer samples per
frame), so the figure bounds what a finer playback can add; whether it adds accuracy is the study's question
(tools/study.py). Example::

    python tools/hop_detail.py --cfg configs/Small/PlayItBackX2.yaml TRAIN.DATASET custom TEST.DATASET custom \\
        CUSTOM.AUDIO_DATA_DIR data/sound_scenes/audio CUSTOM.ANNOTATIONS_DIR data/sound_scenes/annotations \\
        DATA.EVENTS_FILE data/sound_scenes/annotations/events.csv

Prints one JSON line per window scaling.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch
from fvcore.common.config import CfgNode
from torch import Tensor

from playitback.config import ConfigError, load_config
from playitback.config.choices import WINDOW_SCALINGS
from playitback.data.build import build_dataset, build_pyramid
from playitback.data.events import EventFrames, load_event_spans
from playitback.data.spectrogram import PlaybackPyramid, playback_hops
from playitback.models.replay import coarse_playback
from playitback.utils.cli import exit_on_user_error


def detail_sums(playbacks: Sequence[Tensor], bases: Sequence[Tensor], hops: Sequence[int],
                masks: Sequence[Tensor | None]) -> list[Tensor]:
    """Per finer playback i: [residual energy, temporal variance] summed over frames and bands, overall and (where
    `masks[i]` is given) inside the mask.

    Args:
        playbacks: S log-mels [T_i, F] of one crop; frame t of playback i centred at t * hops[i] samples.
        bases: S log-mels [T_0, F] at playback 0's hop, bases[i] with playback i's window (bases[0] is unused).
        hops: S hops in samples.
        masks: S bool masks [T_i] (or None) of the frames to pool separately.

    Returns:
        S - 1 tensors [2, 2] (rows: all frames, masked frames; columns: residual, variance), float64.
    """
    sums = []
    for finer, base, hop, mask in zip(playbacks[1:], bases[1:], hops[1:], masks[1:]):
        finer = finer.double()
        coarse = coarse_playback(base.double()[None], hops[0], hop, finer.shape[0])[0]
        residual = (finer - coarse).square().sum(1)  # [T_i]
        variance = (finer - finer.mean(0, keepdim=True)).square().sum(1)  # [T_i]
        inside = mask if mask is not None else torch.zeros_like(residual, dtype=torch.bool)
        sums.append(torch.stack([torch.stack([residual.sum(), variance.sum()]),
                                 torch.stack([residual[inside].sum(), variance[inside].sum()])]))
    return sums


def measure(cfg: CfgNode, max_clips: int) -> dict[str, dict[str, float]]:
    """detail_i over the config's test clips (the first `max_clips`), for every window scaling."""
    cfg.defrost()
    cfg.DATA.FRONTEND = "device"  # items carry waveforms; the pyramids below render them
    dataset = build_dataset(cfg, "test")
    spans = load_event_spans(cfg.DATA.EVENTS_FILE) if cfg.DATA.EVENTS_FILE else None
    rate = cfg.AUDIO_DATA.SAMPLING_RATE
    results = {}
    for scaling in WINDOW_SCALINGS:
        cfg.AUDIO_DATA.WINDOW_SCALING = scaling
        pyramid = build_pyramid(cfg)
        # Playback 0's hop with each playback's window: what the finer hop is compared with.
        base_pyramids = [PlaybackPyramid(rate, 1, pyramid.frames0, length * 1000 / rate, pyramid.n_fft,
                                         pyramid.n_mels, pyramid.pad_mode, style=pyramid.style)
                         for length in pyramid.win_lengths]
        totals = None
        for index in range(min(max_clips, len(dataset))):
            item = dataset[index]
            waveform = item["waveform"]
            playbacks = pyramid(waveform, int(item["valid_samples"]))
            hops = playback_hops(waveform.shape[-1], pyramid.num_playbacks, pyramid.frames0)
            masks = [None if spans is None else
                     EventFrames(spans, p.shape[0] * hop / rate, p.shape[0])(dataset.records[item["index"]],
                                                                           item["crop_start_s"])
                     for p, hop in zip(playbacks, hops)]
            bases = [base(waveform, int(item["valid_samples"]))[0] for base in base_pyramids]
            sums = torch.stack(detail_sums(playbacks, bases, hops, masks))
            totals = sums if totals is None else totals + sums
        results[scaling] = {"window_ms": [round(w * 1000 / rate, 2) for w in pyramid.win_lengths],
                            **{f"detail_p{i + 1}": float(t[0, 0] / t[0, 1]) for i, t in enumerate(totals)},
                            **({f"detail_p{i + 1}_in_events": float(t[1, 0] / t[1, 1]) for i, t in enumerate(totals)}
                               if spans is not None else {}),
                            "clips": min(max_clips, len(dataset))}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="KEY VALUE config overrides go last, after the flags.")
    parser.add_argument("--cfg", required=True, help="a PlayItBack config (MODEL.PLAYBACK >= 1)")
    parser.add_argument("--clips", type=int, default=256, help="test clips to measure (the first N of the list)")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    return exit_on_user_error(lambda: report(args.cfg, args.opts, args.clips))


def report(cfg_file: str, opts: Sequence[str], clips: int) -> int:
    cfg = load_config(cfg_file, ["NUM_GPUS", "0", *opts])
    if cfg.MODEL.PLAYBACK < 1:
        raise ConfigError(f"{cfg_file} has MODEL.PLAYBACK {cfg.MODEL.PLAYBACK}: there is no finer playback to measure")
    for scaling, figures in measure(cfg, clips).items():
        print(json.dumps({"window_scaling": scaling, **figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

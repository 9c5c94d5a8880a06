"""The input normalisation of a dataset: mean and standard deviation of the log-mels the encoder reads.

Computed over the playback-0 log-mels of the training split's centre crops (at most --max-clips clips drawn at
random), with the config's front-end (rate, clip length, frames, window). Put the printed keys in the config (or pass
them on the command line), as AST and PaSST do with their dataset statistics. Example::

    python tools/input_stats.py --cfg configs/Demo/MViT_pretrain.yaml TRAIN.DATASET custom TEST.DATASET custom \\
        CUSTOM.AUDIO_DATA_DIR data/sound_scenes/audio CUSTOM.ANNOTATIONS_DIR data/sound_scenes/annotations \\
        MODEL.NUM_CLASSES 16 AUDIO_DATA.CLIP_SECS 5.0
    # -> AUDIO_DATA.NORM_MEAN 0.3303 AUDIO_DATA.NORM_STD 1.1887
"""
from __future__ import annotations

import json
import sys
import time

from playitback.data.statistics import input_statistics
from playitback.utils.cli import config_tool_parser, load_tool_config


def main(argv: list[str] | None = None) -> int:
    """Compute and print the statistics; returns the process exit code."""
    parser = config_tool_parser(__doc__)
    parser.add_argument("--max-clips", type=int, default=2000, help="clips to average over (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice of clips")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the KEY VALUE line")
    args = parser.parse_args(argv)
    cfg = load_tool_config(args)
    if cfg is None:
        return 2
    began = time.perf_counter()
    mean, std, clips = input_statistics(cfg, args.max_clips, args.seed)
    if args.json:
        print(json.dumps({"AUDIO_DATA.NORM_MEAN": mean, "AUDIO_DATA.NORM_STD": std, "clips": clips}))
    else:
        print(f"AUDIO_DATA.NORM_MEAN {mean:.4f} AUDIO_DATA.NORM_STD {std:.4f}")
        print(f"({clips} training clips, {time.perf_counter() - began:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

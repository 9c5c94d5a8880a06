"""Render a realistic sound-event dataset from real sound sources (custom-dataset layout, with event times).

Sampled instruments and sound effects of a General-MIDI SoundFont (fluidsynth) are the classes; each clip hides one
0.3-1.0 s event inside 5 s of room tone, speech babble (espeak-ng) and distractor sounds. Needs the Debian packages
fluidsynth, fluid-soundfont-gm (or another GM SoundFont: --soundfont) and espeak-ng. Example::

    python tools/make_sound_data.py --out data/sound_scenes --seed 0
    python tools/run_net.py --cfg configs/Demo/MViT_pretrain.yaml TRAIN.DATASET custom TEST.DATASET custom \\
        CUSTOM.AUDIO_DATA_DIR data/sound_scenes/audio CUSTOM.ANNOTATIONS_DIR data/sound_scenes/annotations \\
        CUSTOM.VAL_LIST val.csv MODEL.NUM_CLASSES 16 AUDIO_DATA.CLIP_SECS 5.0 OUTPUT_DIR runs/sound_scenes
"""
from __future__ import annotations

import argparse
import sys
import time

from playitback.synthetic.sound_scenes import SOUND_CLASSES, SourceToolError, make_sound_scenes


def main(argv: list[str] | None = None) -> int:
    """Render the dataset and print a summary; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=16, help=f"2 to {len(SOUND_CLASSES)} (default 16)")
    parser.add_argument("--train-per-class", type=int, default=160)
    parser.add_argument("--val-per-class", type=int, default=24, help="0: no val.csv")
    parser.add_argument("--test-per-class", type=int, default=48)
    parser.add_argument("--clip-secs", type=float, default=5.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--event-snr-db", type=float, nargs=2, default=(-6.0, 6.0), metavar=("LOW", "HIGH"),
                        help="range of the event's SNR against the background over its span (default -6 6)")
    parser.add_argument("--distractor-snr-db", type=float, nargs=2, default=(-6.0, 6.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--max-distractors", type=int, default=3)
    parser.add_argument("--babble-probability", type=float, default=0.8, help="share of clips with speech babble")
    parser.add_argument("--soundfont", default=None, help="General-MIDI .sf2/.sf3 (default: the Debian one)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    try:
        summary = make_sound_scenes(
            args.out, num_classes=args.num_classes, train_per_class=args.train_per_class,
            val_per_class=args.val_per_class, test_per_class=args.test_per_class, clip_secs=args.clip_secs,
            sample_rate=args.sample_rate, event_snr_db=tuple(args.event_snr_db),
            distractor_snr_db=tuple(args.distractor_snr_db), max_distractors=args.max_distractors,
            babble_probability=args.babble_probability, seed=args.seed, jobs=args.jobs, soundfont=args.soundfont,
        )
    except (ValueError, SourceToolError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    clips = summary["num_clips"]
    print(f"sound scenes in {summary['out_dir']}: {sum(clips.values())} clips "
          f"({', '.join(f'{n} {split}' for split, n in clips.items() if n)}), {len(summary['class_names'])} classes, "
          f"{sum(summary['seconds'].values()):.0f} s of audio at {args.sample_rate} Hz "
          f"({time.perf_counter() - began:.1f} s; SoundFont {summary['soundfont']})")
    print(f"classes: {', '.join(summary['class_names'])}")
    print(f"annotations: {summary['annotations_dir']} (train.csv, val.csv, test.csv, classes.txt; events.csv "
          f"for DATA.EVENTS_FILE)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The PlayItBack study: stage 1, stage 2 and every control from the same stage-1 checkpoint, on several seeds, each
tested from its saved checkpoint, summarised with paired differences, bootstrap intervals and GFLOPs per clip.

Example (the sound scenes of tools/make_sound_data.py, 3 seeds, every control, 2 runs at a time)::

    python tools/study.py --stage1 configs/Small/MViT_scratch.yaml --stage2 configs/Small/PlayItBackX2.yaml \\
        --data data/sound_scenes --seeds 3 --controls all --jobs 2 --out runs/study_scenes

Per seed, each run a fresh ``tools/run_net.py`` process, as a user would type it:
  stage1          the stage-1 config from scratch (RNG_SEED = seed);
then from its checkpoint (the best validation epoch where the validation list is not the test list, else the last),
the same number of stage-2 epochs for each of:
  encoder_only    the stage-1 config trained on (the encoder alone, same budget);
  playitback      the stage-2 config (the method);
and with --controls (names, or "all"):
  encoder_finest  the encoder alone on the whole clip at the finest playback's frame count (AUDIO_DATA.FRAMES0 x
                  (MODEL.PLAYBACK + 1)): what the replay must beat per GFLOP;
  coarse          MODEL.REPLAY_RESOLUTION coarse: the same spans replayed without the finer hop;
  random          MODEL.REPLAY random: spans of the same length at random places;
  oracle          MODEL.REPLAY events: the annotated events replayed (needs an events file);
  none            MODEL.REPLAY none: no replay (every playback re-reads playback 0);
  class_agnostic  SALIENCY.MIL_POOLING attention: a saliency that cannot depend on the predicted class;
and the test-time swaps (--swaps): the trained playitback weights tested with only the replayed frames changed
(swap_random, swap_oracle, swap_none, swap_coarse).

Every test writes its scores; PlayItBack runs also their replayed segments, scored against the events file
(replayed-time precision of the last playback and its chance level, playitback.localisation).

Output under --out: seed<k>/<run>/ (run_net OUTPUT_DIRs), summary.json (every figure) and summary.md (the table:
mean +- standard deviation over seeds, the paired per-seed difference to the encoder alone, a 95% bootstrap interval
of that difference over test clips, GFLOPs per clip). A finished run is not run again, and an interrupted one resumes
from its last checkpoint (TRAIN.AUTO_RESUME), so the same command continues an interrupted study.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from playitback.config import derived, load_config
from playitback.data.events import load_event_spans
from playitback.localisation import evaluate_segments, read_segments

REPO = Path(__file__).resolve().parents[1]

BASELINE = "encoder_only"
METHOD = "playitback"
# name -> (which config, overrides, what it controls for).
CONTROLS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "encoder_finest": ("stage1", (), "encoder alone at the finest hop, whole clip"),
    "coarse": ("stage2", ("MODEL.REPLAY_RESOLUTION", "coarse"), "same spans without the finer hop"),
    "random": ("stage2", ("MODEL.REPLAY", "random"), "random spans of the same length"),
    "oracle": ("stage2", ("MODEL.REPLAY", "events"), "the annotated events replayed"),
    "none": ("stage2", ("MODEL.REPLAY", "none"), "no replay"),
    "class_agnostic": ("stage2", ("SALIENCY.MIL_POOLING", "attention"), "class-agnostic saliency"),
}
SWAPS: dict[str, tuple[tuple[str, ...], str]] = {
    "swap_random": (("MODEL.REPLAY", "random"), "trained weights, random spans at test"),
    "swap_oracle": (("MODEL.REPLAY", "events"), "trained weights, the events at test"),
    "swap_none": (("MODEL.REPLAY", "none"), "trained weights, no replay at test"),
    "swap_coarse": (("MODEL.REPLAY_RESOLUTION", "coarse"), "trained weights, no finer hop at test"),
}
NEEDS_EVENTS = {"oracle", "swap_oracle"}


@dataclass(frozen=True)
class Study:
    """What the runs of a study share."""

    stage1: Path
    stage2: Path
    dataset_opts: tuple[str, ...]  # where the data is (dataset keys)
    extra_opts: tuple[str, ...]  # the user's KEY VALUE overrides, for every run
    events_csv: Path | None
    out: Path
    stage2_epochs: int
    stage1_epochs: int | None
    threads: int  # OMP threads per run


@dataclass
class Run:
    """One training or test process of the study, with the runs it waits for."""

    name: str
    action: Callable[[], None]
    after: tuple[str, ...] = ()
    done: Callable[[], bool] = field(default=lambda: False)


def last_metrics(output_dir: Path, split: str) -> dict | None:
    """The last metrics.jsonl row of `split` in a run's OUTPUT_DIR, or None."""
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [row for row in rows if row.get("split") == split]
    return rows[-1] if rows else None


def run_net(study: Study, log: Path, args: Sequence[str]) -> None:
    """tools/run_net.py with `args`, its output in `log`; raises naming the log if it fails."""
    command = [sys.executable, str(REPO / "tools" / "run_net.py"), *args, *study.extra_opts]
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(study.threads)}
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command[1:]) + "\n")
        handle.flush()
        result = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"run failed (exit {result.returncode}): see {log}")


def checkpoint_of(study: Study, cfg_file: Path, output_dir: Path, opts: Sequence[str]) -> Path:
    """The checkpoint a trained run hands on: its best validation epoch where validation is not the test list, else
    its last epoch (a checkpoint chosen on the test clips would bias every comparison)."""
    from playitback.engine.trainer import validation_is_test

    cfg = load_config(cfg_file, [*opts, *study.extra_opts])
    checkpoints = output_dir / "checkpoints"
    if not validation_is_test(cfg) and (checkpoints / "checkpoint_best.pyth").is_file():
        return checkpoints / "checkpoint_best.pyth"
    return checkpoints / f"checkpoint_epoch_{cfg.SOLVER.MAX_EPOCH:05d}.pyth"


def is_trained(study: Study, cfg_file: Path, output_dir: Path, opts: Sequence[str]) -> bool:
    """Whether a run wrote the checkpoint of its last epoch (an interrupted run has a best checkpoint already)."""
    cfg = load_config(cfg_file, [*opts, *study.extra_opts])
    return (output_dir / "checkpoints" / f"checkpoint_epoch_{cfg.SOLVER.MAX_EPOCH:05d}.pyth").is_file()


def finest_frames(study: Study) -> int:
    """Frames of the finest playback of the stage-2 config: FRAMES0 x (PLAYBACK + 1)."""
    cfg = load_config(study.stage2, [*study.dataset_opts, *study.extra_opts])
    return cfg.AUDIO_DATA.FRAMES0 * (cfg.MODEL.PLAYBACK + 1)


def variant_config(study: Study, name: str) -> tuple[Path, list[str]]:
    """The config file and overrides of a stage-2 run (the method, the baseline or a control), without seed, data,
    budget or output keys."""
    if name == BASELINE:
        return study.stage1, []
    if name == METHOD:
        return study.stage2, []
    stage, opts, _ = CONTROLS[name]
    if name == "encoder_finest":
        return study.stage1, ["AUDIO_DATA.FRAMES0", str(finest_frames(study))]
    return (study.stage1 if stage == "stage1" else study.stage2), list(opts)


def is_playitback(cfg_file: Path, opts: Sequence[str]) -> bool:
    return not derived.is_encoder_only(load_config(cfg_file, list(opts)))


def plan_seed(study: Study, seed: int, controls: Sequence[str], swaps: Sequence[str]) -> list[Run]:
    """The runs of one seed: stage 1, the baseline and the method trained from its checkpoint and tested, the swaps,
    then the trained controls."""
    root = study.out / f"seed{seed}"
    seeded = [*study.dataset_opts, "RNG_SEED", str(seed), "TRAIN.AUTO_RESUME", "True"]
    events = ["DATA.EVENTS_FILE", str(study.events_csv)] if study.events_csv else []
    stage1_dir = root / "stage1"
    stage1_opts = [*seeded, "TEST.ENABLE", "False", "OUTPUT_DIR", str(stage1_dir)]
    if study.stage1_epochs:
        stage1_opts += ["SOLVER.MAX_EPOCH", str(study.stage1_epochs)]

    def stage1_checkpoint() -> Path:
        return checkpoint_of(study, study.stage1, stage1_dir, stage1_opts)

    stage1 = Run(f"seed{seed}/stage1", lambda: run_net(study, stage1_dir / "study.log", ["--cfg", str(study.stage1),
                                                                                      *stage1_opts]),
                 done=lambda: is_trained(study, study.stage1, stage1_dir, stage1_opts))
    variant_runs: dict[str, list[Run]] = {}
    for name in (BASELINE, METHOD, *controls):
        cfg_file, opts = variant_config(study, name)
        out = root / name
        replaying = is_playitback(cfg_file, [*seeded, *opts, *events, *study.extra_opts])
        train_opts = [*seeded, *opts, *(events if replaying else []), "SOLVER.MAX_EPOCH", str(study.stage2_epochs),
                      "TEST.ENABLE", "False", "OUTPUT_DIR", str(out)]
        if not replaying:
            train_opts += ["TRAIN.CHECKPOINT_EPOCH_RESET", "True"]
        test_opts = [*seeded, *opts, *(events if replaying else []), "SOLVER.MAX_EPOCH", str(study.stage2_epochs),
                     "TRAIN.ENABLE", "False", "TEST.ENABLE", "True", "OUTPUT_DIR", str(out),
                     *(["TEST.SAVE_SEGMENTS", "True"] if replaying else [])]

        def train(cfg_file: Path = cfg_file, train_opts: list[str] = train_opts, out: Path = out) -> None:
            run_net(study, out / "study.log", ["--cfg", str(cfg_file), *train_opts,
                                               "TRAIN.CHECKPOINT_FILE_PATH", str(stage1_checkpoint())])

        def test(cfg_file: Path = cfg_file, train_opts: list[str] = train_opts, test_opts: list[str] = test_opts,
                 out: Path = out) -> None:
            checkpoint = checkpoint_of(study, cfg_file, out, train_opts)
            run_net(study, out / "study.log", ["--cfg", str(cfg_file), *test_opts,
                                               "TEST.CHECKPOINT_FILE_PATH", str(checkpoint)])

        def trained(cfg_file: Path = cfg_file, train_opts: list[str] = train_opts, out: Path = out) -> bool:
            return is_trained(study, cfg_file, out, train_opts)

        variant_runs[name] = [Run(f"seed{seed}/{name}", train, (f"seed{seed}/stage1",), trained),
                              Run(f"seed{seed}/{name}:test", test, (f"seed{seed}/{name}",),
                                  lambda out=out: last_metrics(out, "test_final") is not None)]
    swap_runs = []
    for name in swaps:
        swap_opts, _ = SWAPS[name]
        out = root / name
        method_dir = root / METHOD
        test_opts = [*seeded, *swap_opts, *events, "SOLVER.MAX_EPOCH", str(study.stage2_epochs), "TRAIN.ENABLE",
                     "False", "TEST.ENABLE", "True", "TEST.SAVE_SEGMENTS", "True", "OUTPUT_DIR", str(out)]

        def swap(test_opts: list[str] = test_opts, method_dir: Path = method_dir, out: Path = out) -> None:
            checkpoint = checkpoint_of(study, study.stage2, method_dir, [*study.dataset_opts, "SOLVER.MAX_EPOCH",
                                                                         str(study.stage2_epochs)])
            run_net(study, out / "study.log", ["--cfg", str(study.stage2), *test_opts,
                                               "TEST.CHECKPOINT_FILE_PATH", str(checkpoint)])

        swap_runs.append(Run(f"seed{seed}/{name}", swap, (f"seed{seed}/{METHOD}",),
                             lambda out=out: last_metrics(out, "test_final") is not None))
    # The swaps take seconds, so they go before the trained controls.
    return [stage1, *variant_runs[BASELINE], *variant_runs[METHOD], *swap_runs,
            *(run for name in controls for run in variant_runs[name])]


def interleave_seeds(per_seed: Sequence[Sequence[Run]]) -> list[Run]:
    """The runs of every seed, round robin (each seed's first run, then each seed's second, ...): an interrupted study
    then has the method and its baseline on every seed before the controls of the first."""
    return [run for rank in itertools.zip_longest(*per_seed) for run in rank if run is not None]


def execute(runs: Sequence[Run], jobs: int, log: Callable[[str], None] = print) -> None:
    """Run every run after the runs it waits for, `jobs` at a time, with a progress line per start and end. Runs
    already done are skipped; the first failure stops new starts, lets the running ones finish, and is raised."""
    by_name = {run.name: run for run in runs}
    finished = {run.name for run in runs if run.done()}
    pending = [run for run in runs if run.name not in finished]
    total, started_at, durations = len(runs), time.monotonic(), []
    log(f"study: {total} runs, {len(finished)} already done, {len(pending)} to run, {jobs} at a time")
    failures: list[BaseException] = []
    running: dict[Future, tuple[Run, float]] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            ready = [run for run in pending if all(dep in finished for dep in run.after)] if not failures else []
            for run in ready[: jobs - len(running)]:
                pending.remove(run)
                log(f"[{len(finished)}/{total}] start {run.name}")
                running[pool.submit(run.action)] = (run, time.monotonic())
            if not running:
                missing = sorted({dep for run in pending for dep in run.after} - set(by_name))
                if missing and not failures:
                    raise ValueError(f"runs wait for unknown runs {missing}")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                run, start = running.pop(future)
                if future.exception() is not None:
                    failures.append(future.exception())
                    log(f"FAILED {run.name}: {future.exception()}")
                    continue
                finished.add(run.name)
                durations.append(time.monotonic() - start)
                eta = statistics.mean(durations) * (len(pending) + len(running)) / jobs
                log(f"[{len(finished)}/{total}] done {run.name} in {durations[-1]:.0f} s; "
                    f"elapsed {time.monotonic() - started_at:.0f} s, about {eta / 60:.0f} min left")
    if failures:
        raise failures[0]


# ---------------------------------------------------------------------------------------------------------------------
# Figures of a finished study.
# ---------------------------------------------------------------------------------------------------------------------
def clip_correct(output_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(clip ids, whether each test clip's top-1 class is one of its labels) from a run's scores/test.npz."""
    scores = np.load(output_dir / "scores" / "test.npz")
    predicted = scores["scores"].argmax(1)
    labels = scores["labels"]
    correct = labels[np.arange(len(predicted)), predicted] > 0 if labels.ndim == 2 else predicted == labels
    return scores["uids"], correct


def paired_bootstrap(correct: np.ndarray, reference: np.ndarray, draws: int = 2000, seed: int = 0
                     ) -> tuple[float, float]:
    """95% interval of the mean over seeds of top-1(correct) - top-1(reference), in points, resampling test clips.

    Args:
        correct, reference: bool [seeds, clips], the same clips in the same order in both.
    """
    rng = np.random.default_rng(seed)
    difference = correct.astype(np.float64) - reference.astype(np.float64)  # [seeds, clips]
    picks = rng.integers(0, difference.shape[1], size=(draws, difference.shape[1]))
    means = difference[:, picks].mean(axis=(0, 2)) * 100  # [draws]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def localisation(output_dir: Path, events_csv: Path | None) -> dict[str, float] | None:
    """Replayed-time precision of the last playback and its chance level, from a run's segments.jsonl."""
    path = output_dir / "scores" / "segments.jsonl"
    if events_csv is None or not path.is_file():
        return None
    scores = evaluate_segments(read_segments(path), load_event_spans(events_csv))
    last = scores[max((k for k in scores if k != "all"), key=lambda k: int(k.split("_")[1]))]
    return {key: last[key] for key in ("precision", "chance_precision", "recall", "replayed_fraction")}


def gflops_per_clip(cfg_file: Path, opts: Sequence[str]) -> float:
    """Multiply-adds (GMACs, fvcore's convention) of one clip's forward pass."""
    from model_info import model_info

    return model_info(load_config(cfg_file, list(opts)))["flops"]["total"] / 1e9


def summarise(study: Study, seeds: Sequence[int], names: Sequence[str]) -> dict:
    """Every figure of the finished runs: per run name, top-1 per seed, mean/sd, paired differences to the encoder
    alone and the method, bootstrap intervals, GFLOPs per clip and localisation."""
    correct: dict[str, np.ndarray] = {}
    rows: dict[str, dict] = {}
    for name in names:
        per_seed = []
        for seed in seeds:
            uids, hits = clip_correct(study.out / f"seed{seed}" / name)
            order = np.argsort(uids)
            per_seed.append(hits[order])
        correct[name] = np.stack(per_seed)
    for name in names:
        top1 = [float(100 * row.mean()) for row in correct[name]]
        mean, sd = mean_sd(top1)
        row = {"top1": top1, "top1_mean": mean, "top1_sd": sd}
        for reference in (BASELINE, METHOD):
            if reference in correct and reference != name:
                diffs = [a - b for a, b in zip(top1, [float(100 * r.mean()) for r in correct[reference]])]
                low, high = paired_bootstrap(correct[name], correct[reference])
                row[f"minus_{reference}"] = {"per_seed": diffs, "mean": mean_sd(diffs)[0], "sd": mean_sd(diffs)[1],
                                             "bootstrap95": [low, high]}
        located = [localisation(study.out / f"seed{seed}" / name, study.events_csv) for seed in seeds]
        if all(located):
            row["localisation"] = {key: [entry[key] for entry in located] for key in located[0]}
        rows[name] = row
    return {"seeds": list(seeds), "test_clips": int(correct[names[0]].shape[1]), "runs": rows}


def _paired_cells(row: dict, key: str) -> tuple[str, str]:
    """The table cells of one paired difference of a summary row: mean +- sd (per seed), and its bootstrap interval."""
    if key not in row:
        return "", ""
    d = row[key]
    seeds = ", ".join(f"{v:+.1f}" for v in d["per_seed"])
    return (f"{d['mean']:+.1f} +- {d['sd']:.1f} ({seeds})",
            f"[{d['bootstrap95'][0]:+.1f}, {d['bootstrap95'][1]:+.1f}]")


def markdown_table(summary: dict) -> str:
    """The study table: one row per run, columns for top-1, paired differences, GFLOPs and localisation."""
    lines = ["| run | what | top-1 (%) | - encoder alone (paired, per seed) | 95% CI | - PlayItBack | GMACs/clip | "
             "replay precision (chance) |", "|---|---|---|---|---|---|---|---|"]
    describe = {BASELINE: "encoder alone, same budget", METHOD: "the method",
                **{k: v[2] for k, v in CONTROLS.items()}, **{k: v[1] for k, v in SWAPS.items()}}
    for name, row in summary["runs"].items():
        base, ci = _paired_cells(row, f"minus_{BASELINE}")
        method, _ = _paired_cells(row, f"minus_{METHOD}")
        located = row.get("localisation")
        precision = (f"{100 * statistics.mean(located['precision']):.1f} "
                     f"({100 * statistics.mean(located['chance_precision']):.1f})" if located else "")
        gmacs = f"{row['gmacs']:.3f}" if "gmacs" in row else ""
        lines.append(f"| {name} | {describe.get(name, '')} | {row['top1_mean']:.1f} +- {row['top1_sd']:.1f} | {base} | "
                     f"{ci} | {method} | {gmacs} | {precision} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1", type=Path, required=True, help="stage-1 (encoder) config")
    parser.add_argument("--stage2", type=Path, required=True, help="stage-2 (PlayItBack) config")
    parser.add_argument("--data", type=Path, required=True,
                        help="dataset folder with audio/ and annotations/ (train.csv, test.csv, optional val.csv, "
                             "events.csv for the oracle and localisation)")
    parser.add_argument("--dataset", choices=("custom", "vggsound"), default="custom",
                        help="the annotation layout: custom (make_sound_data.py) or vggsound (make_demo_data.py)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--controls", default="all", help=f"comma-separated names of {sorted(CONTROLS)}, all or none")
    parser.add_argument("--swaps", default="all", help=f"comma-separated names of {sorted(SWAPS)}, all or none")
    parser.add_argument("--stage1-epochs", type=int, default=None, help="default: the stage-1 config's")
    parser.add_argument("--stage2-epochs", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP threads per run (default: cores / jobs); 1 leaves the other cores to other work")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    return parser.parse_args(argv)


def names_of(value: str, known: dict) -> list[str]:
    if value == "all":
        return list(known)
    if value in ("", "none"):
        return []
    names = [name.strip() for name in value.split(",")]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"error: unknown name(s) {unknown}; choose from {sorted(known)}, all or none")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = args.data.resolve()
    prefix = "CUSTOM" if args.dataset == "custom" else "VGGSOUND"
    events_csv = data / "annotations" / "events.csv"
    controls, swaps = names_of(args.controls, CONTROLS), names_of(args.swaps, SWAPS)
    if not events_csv.is_file():
        dropped = [name for name in (*controls, *swaps) if name in NEEDS_EVENTS]
        if dropped:
            print(f"no {events_csv}: left out {dropped} (they replay the annotated events)")
        controls = [c for c in controls if c not in NEEDS_EVENTS]
        swaps = [s for s in swaps if s not in NEEDS_EVENTS]
    study = Study(stage1=args.stage1.resolve(), stage2=args.stage2.resolve(),
                  dataset_opts=(f"{prefix}.AUDIO_DATA_DIR", str(data / "audio"), f"{prefix}.ANNOTATIONS_DIR",
                                str(data / "annotations")),
                  extra_opts=tuple(args.opts), events_csv=events_csv if events_csv.is_file() else None,
                  out=args.out.resolve(), stage2_epochs=args.stage2_epochs, stage1_epochs=args.stage1_epochs,
                  threads=args.threads or max(1, (os.cpu_count() or 1) // args.jobs))
    seeds = list(range(args.seeds))
    runs = interleave_seeds([plan_seed(study, seed, controls, swaps) for seed in seeds])
    execute(runs, args.jobs)
    names = [BASELINE, METHOD, *controls, *swaps]
    summary = summarise(study, seeds, names)
    for name in names:
        cfg_file, opts = variant_config(study, name) if name in (BASELINE, METHOD, *CONTROLS) else (study.stage2, [])
        if "MODEL.REPLAY" in opts:  # where it replays changes nothing of the cost
            cfg_file, opts = study.stage2, []
        summary["runs"][name]["gmacs"] = gflops_per_clip(cfg_file, [*study.dataset_opts, *opts, *study.extra_opts])
    summary["config"] = {"stage1": str(args.stage1), "stage2": str(args.stage2), "data": str(data),
                         "stage2_epochs": args.stage2_epochs, "opts": list(args.opts)}
    (study.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown_table(summary)
    (study.out / "summary.md").write_text(table)
    print(table)
    print(f"summary: {study.out / 'summary.json'}, {study.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

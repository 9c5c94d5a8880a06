"""A small synthetic dataset in the VGG-Sound layout, for the demo and for smoke tests.

Each clip is a few seconds of background (pink noise, steady harmonic tones and noise bursts, drawn the same way for
every class) with one short event (0.4-0.7 s) at a random time. Only the event tells the class, by two cues:

* its pitch (one of num_classes / 2 octave-spaced groups from 200 Hz), visible at any time resolution;
* its pulse rate, 10 or 26 pulses per second. Sampled at the 16 frames/s of playback 0 (4 s crops, T0 = 64) both
  rates alias to the same 6 Hz apparent rate, so the two classes of a pitch group look alike there; at playback 1
  (32 frames/s) and playback 2 (48 frames/s) they differ.

So a model that only sees playback 0 can at best tell the pitch group, and finding the event and replaying it at a
finer hop is what separates the two rates of a group.

Layout written under ``out_dir``::

    audio/<class name>/<uid>.wav          16-bit PCM mono
    annotations/train.csv, test.csv       project CSV (read_annotations(path, "vggsound"))
    annotations/classes.txt               one class name per line, line number = id
    annotations/events.csv                uid,event_start_s,event_stop_s
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from playitback.data.annotations import write_records_csv
from playitback.data.records import ClipRecord

__all__ = ["demo_classes", "make_demo_dataset"]

_PULSE_RATES_HZ = (10.0, 26.0)
_LOWEST_PITCH_HZ = 200.0
_EVENT_SECS = (0.4, 0.7)
_MAX_CLASSES = 32
_SPLITS = ("train", "test")


def demo_classes(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(pitch in Hz, pulse rate in Hz) of each demo class, two arrays ``[num_classes]``: class k is pitch group k // 2
    (octave-spaced groups spanning 200 Hz to 3.2 kHz) pulsed at rate k % 2 (10 or 26 per second)."""
    groups = (num_classes + 1) // 2
    group = np.arange(num_classes) // 2
    pitches = _LOWEST_PITCH_HZ * 16.0 ** (group / max(groups - 1, 1))
    rates = np.array(_PULSE_RATES_HZ)[np.arange(num_classes) % 2]
    return pitches, rates


def _harmonic_tone(rng: np.random.Generator, t: np.ndarray, f0: float, tilt: float, sample_rate: int) -> np.ndarray:
    """Unit-RMS harmonic complex (harmonics below 0.45 * rate, amplitudes ``h ** -tilt``), shape like ``t``."""
    harmonics = np.arange(1, int(0.45 * sample_rate / f0) + 1)[:12]
    phases = rng.uniform(0, 2 * np.pi, len(harmonics))
    tone = (harmonics[:, None] ** -tilt * np.sin(2 * np.pi * f0 * harmonics[:, None] * t + phases[:, None])).sum(0)
    return tone / np.sqrt(np.mean(tone**2))


def _shaped_noise(rng: np.random.Generator, num: int, sample_rate: int, centre_hz: float | None) -> np.ndarray:
    """Unit-RMS noise ``[num]``: pink (``centre_hz`` None) or a one-octave band around ``centre_hz``."""
    spectrum = np.fft.rfft(rng.standard_normal(num))
    freqs = np.fft.rfftfreq(num, 1 / sample_rate)
    if centre_hz is None:
        spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    else:
        spectrum *= np.exp(-0.5 * (np.log2(np.maximum(freqs, 1.0) / centre_hz) / 0.5) ** 2)
    noise = np.fft.irfft(spectrum, num)
    return noise / np.sqrt(np.mean(noise**2))


def _ramp(num: int, sample_rate: int) -> np.ndarray:
    """Raised-cosine 10 ms onset and offset, shape ``[num]``, so events and distractors do not click."""
    edge = min(int(0.01 * sample_rate), num // 2)
    ramp = np.ones(num)
    rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)
    ramp[:edge] = rise
    ramp[num - edge :] = rise[::-1]
    return ramp


def _render_clip(
    rng: np.random.Generator, pitch_hz: float, rate_hz: float, clip_secs: float, sample_rate: int
) -> tuple[np.ndarray, float, float]:
    """One clip ``[round(clip_secs * sample_rate)]`` in [-1, 1], with its event's start and stop in seconds."""
    num = round(clip_secs * sample_rate)
    audio = 0.01 * _shaped_noise(rng, num, sample_rate, None)
    # Distractors are drawn identically for every class, so only the event carries class information.
    for _ in range(int(rng.integers(2, 5))):
        length = int(rng.uniform(0.15, 0.8) * sample_rate)
        start = int(rng.integers(0, num - length))
        t = np.arange(length) / sample_rate
        if rng.random() < 0.5:
            piece = _harmonic_tone(rng, t, rng.uniform(150, 450), rng.uniform(0.8, 1.6), sample_rate)
        else:
            piece = _shaped_noise(rng, length, sample_rate, rng.uniform(300, 4000))
        audio[start : start + length] += rng.uniform(0.02, 0.06) * piece * _ramp(length, sample_rate)
    event_secs = rng.uniform(*_EVENT_SECS)
    event_start = rng.uniform(0.1, clip_secs - event_secs - 0.1)
    first = round(event_start * sample_rate)
    length = round(event_secs * sample_rate)
    t = np.arange(length) / sample_rate
    # Sharp pulses (cosine envelope to the 4th power) make the rate visible in frame energies at a fine hop.
    pulse_rate = rate_hz * rng.uniform(0.97, 1.03)
    envelope = (0.5 - 0.5 * np.cos(2 * np.pi * pulse_rate * t + rng.uniform(0, 2 * np.pi))) ** 4
    tone = _harmonic_tone(rng, t, pitch_hz * rng.uniform(0.95, 1.05), 1.0, sample_rate)
    event = tone * envelope / np.sqrt(np.mean(envelope**2)) * _ramp(length, sample_rate)
    audio[first : first + length] += rng.uniform(0.05, 0.1) * event
    peak = np.abs(audio).max()
    if peak > 0.95:
        audio *= 0.95 / peak
    return audio, first / sample_rate, (first + length) / sample_rate


def make_demo_dataset(
    out_dir: str | Path,
    *,
    num_classes: int = 8,
    train_per_class: int = 48,
    test_per_class: int = 16,
    clip_secs: float = 4.0,
    sample_rate: int = 16000,
    seed: int = 0,
) -> dict:
    """Write the demo dataset (see the module docstring for the layout); the same arguments give identical bytes.

    Args:
        out_dir: Output folder (created; existing demo files are overwritten).
        num_classes: Number of classes, 2 to 32.
        train_per_class: Training clips per class.
        test_per_class: Test clips per class.
        clip_secs: Clip length in seconds (at least 1).
        sample_rate: Sample rate of the WAV files in Hz.
        seed: Seed of every random draw.

    Returns:
        Summary: ``out_dir``, ``audio_dir``, ``train_csv``, ``test_csv``, ``classes_txt``, ``events_csv`` (paths),
        ``class_names``, ``class_rates_hz``, ``class_pitches_hz``, ``num_train``, ``num_test``, ``sample_rate``, ``clip_secs``.

    Raises:
        ValueError: An argument is out of range.
    """
    if not 2 <= num_classes <= _MAX_CLASSES:
        raise ValueError(f"num_classes={num_classes}: the demo supports 2 to {_MAX_CLASSES} classes")
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError(f"train_per_class={train_per_class}, test_per_class={test_per_class}: need at least 1 each")
    if clip_secs < 1.0:
        raise ValueError(f"clip_secs={clip_secs}: clips must be at least 1 s long to hold a 0.5 s event")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate={sample_rate}: use at least 8000 Hz so the harmonic events fit below Nyquist")
    out_dir = Path(out_dir)
    pitches, rates = demo_classes(num_classes)
    names = [f"{pitch:.0f} hz pulsed {rate:.0f} per s" for pitch, rate in zip(pitches, rates)]
    annotations = out_dir / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    events: list[tuple[str, float, float]] = []
    counts = {}
    for split_id, (split, per_class) in enumerate(zip(_SPLITS, (train_per_class, test_per_class), strict=True)):
        records = []
        for class_id, name in enumerate(names):
            class_dir = out_dir / "audio" / name
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([seed, split_id, class_id, i])
                audio, start, stop = _render_clip(rng, pitches[class_id], rates[class_id], clip_secs, sample_rate)
                uid = f"{split}{class_id:02d}_{i:04d}"
                sf.write(class_dir / f"{uid}.wav", audio, sample_rate, subtype="PCM_16")
                records.append(ClipRecord(uid=uid, source=f"{name}/{uid}", labels=(class_id,), label_names=(name,)))
                events.append((uid, start, stop))
        write_records_csv(records, annotations / f"{split}.csv")
        counts[split] = len(records)
    (annotations / "classes.txt").write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    with (annotations / "events.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("uid", "event_start_s", "event_stop_s"))
        writer.writerows((uid, repr(start), repr(stop)) for uid, start, stop in events)
    return {
        "out_dir": out_dir,
        "audio_dir": out_dir / "audio",
        "train_csv": annotations / "train.csv",
        "test_csv": annotations / "test.csv",
        "classes_txt": annotations / "classes.txt",
        "events_csv": annotations / "events.csv",
        "class_names": names,
        "class_rates_hz": [float(rate) for rate in rates],
        "class_pitches_hz": [float(pitch) for pitch in pitches],
        "num_train": counts["train"],
        "num_test": counts["test"],
        "sample_rate": sample_rate,
        "clip_secs": clip_secs,
    }

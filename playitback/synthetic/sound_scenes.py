"""Sound scenes from real sound sources: a realistic event-classification dataset in the custom-dataset layout.

Each clip holds ``clip_secs`` (5 s) of background -- room tone (coloured noise) and, in most clips, speech babble of
one to three talkers (espeak-ng, several languages and voices) -- with up to three distractor sounds (sampled
instruments that belong to no class, drum-kit hits, spoken words) and exactly one class event: a note or a short
phrase (0.3-1.0 s) of a sampled instrument or sound effect of a General-MIDI SoundFont, rendered by fluidsynth, placed
at a random time at a random signal-to-noise ratio. Only the event tells the class; its pitch is drawn over the
instrument's range, so the class is the timbre, not a pitch. Every clip has a random overall level.

Sources: the Debian packages ``fluidsynth`` and ``fluid-soundfont-gm`` (or ``timgm6mb-soundfont``, or any GM
SoundFont through ``soundfont``) and ``espeak-ng``. The same seed, sources and arguments give identical files, whatever
the number of worker processes.

Layout written under ``out_dir``::

    audio/<class>/<split>_<nnnnn>.wav      16-bit PCM mono
    annotations/train.csv, val.csv, test.csv
                                           file,label (read with TRAIN.DATASET custom; file relative to audio/)
    annotations/classes.txt                one class name per line, line number = id
    annotations/events.csv                 uid,event_start_s,event_stop_s for every clip of every split (DATA.EVENTS_FILE;
                                           uid = file without its extension, the uid the custom reader gives the clip)
    annotations/scenes.csv                 uid,split,label,event_snr_db,num_talkers,num_distractors
    dataset.json                           the arguments, the SoundFont and the versions of the tools
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = ["SOUND_CLASSES", "SoundClass", "SourceBank", "Scene", "SourceToolError", "find_soundfont", "mix_scene",
           "make_sound_scenes", "render_event_bank", "render_source_bank", "sounding_span"]

SPLITS = ("train", "val", "test")
SOUNDFONT_CANDIDATES = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2",
                        "/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf3/default-GM.sf3")
DEBIAN_PACKAGES = "fluidsynth fluid-soundfont-gm espeak-ng"
EVENT_SECS = (0.3, 1.0)
# Each event is rendered in a slot of its own in one MIDI file per class and split; the gap lets releases die away.
_SLOT_SECS = EVENT_SECS[1] + 1.5
# A sound "sounds" where its 10 ms frame RMS is within this many dB of its loudest frame.
SOUNDING_DB = 45.0
_FADE_SECS = 0.03
_DRUM_CHANNEL = 9


class SourceToolError(RuntimeError):
    """fluidsynth, espeak-ng or a SoundFont is missing, or one of the tools failed."""


@dataclass(frozen=True)
class SoundClass:
    """One class: a General-MIDI program played in MIDI pitches ``[low, high]``.

    style: ``note`` (one held note), ``phrase`` (2-4 notes in a row) or ``strikes`` (2-5 repeated strikes, for
    instruments that decay fast).
    """

    name: str
    program: int
    low: int
    high: int
    style: str


# Timbres chosen to cover plucked, struck, bowed, blown and sampled real-world sounds; num_classes takes the first N.
SOUND_CLASSES: tuple[SoundClass, ...] = (
    SoundClass("piano", 0, 40, 84, "phrase"),
    SoundClass("marimba", 12, 48, 84, "strikes"),
    SoundClass("church_organ", 19, 36, 72, "note"),
    SoundClass("nylon_guitar", 24, 40, 76, "phrase"),
    SoundClass("violin", 40, 55, 88, "note"),
    SoundClass("cello", 42, 36, 64, "note"),
    SoundClass("harp", 46, 40, 84, "phrase"),
    SoundClass("timpani", 47, 36, 55, "strikes"),
    SoundClass("trumpet", 56, 55, 80, "phrase"),
    SoundClass("alto_sax", 65, 49, 76, "note"),
    SoundClass("oboe", 68, 58, 84, "phrase"),
    SoundClass("flute", 73, 60, 93, "note"),
    SoundClass("sitar", 104, 48, 72, "phrase"),
    SoundClass("steel_drums", 114, 60, 84, "strikes"),
    SoundClass("bird_tweet", 123, 60, 84, "note"),
    SoundClass("telephone_ring", 124, 60, 72, "note"),
    SoundClass("clarinet", 71, 50, 80, "note"),
    SoundClass("trombone", 57, 40, 70, "phrase"),
    SoundClass("banjo", 105, 48, 76, "strikes"),
    SoundClass("xylophone", 13, 65, 96, "strikes"),
    SoundClass("accordion", 21, 48, 76, "note"),
    SoundClass("bagpipe", 109, 55, 72, "note"),
    SoundClass("helicopter", 125, 55, 67, "note"),
    SoundClass("gunshot", 127, 55, 67, "strikes"),
)
# Programs of no class (pads, ensembles, electric and bass sounds): distractors that look like events.
_DISTRACTOR_PROGRAMS = (4, 6, 16, 33, 35, 48, 52, 61, 81, 88, 89, 92, 95, 98)
# Drum-kit notes (channel 10): kick, snare, clap, toms, hi-hats, crash, ride, tambourine, cowbell.
_DRUM_NOTES = (36, 38, 39, 41, 42, 45, 46, 48, 49, 51, 54, 56)
# Babble in several languages and voices; the words are English, read with each language's rules.
_LANGUAGES = ("en-us", "en-gb", "en-gb-scotland", "en-029", "de", "fr", "es", "it", "nl", "pt", "pl", "sv")
_VOICE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
_WORDS = (
    "the a and of to in is was for on that with as it at by from this have not but they his her she we you one "
    "all there when which their said time people way day man thing woman life child world school state family "
    "student group country problem hand part place case week company system program question work government "
    "number night point home water room mother area money story fact month lot right study book eye job word "
    "business issue side kind head house service friend father power hour game line end member law car city "
    "name team minute idea kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force education"
).split()


@dataclass
class SourceBank:
    """Rendered background and distractor sources (float32 mono waveforms at one rate), shared by every clip."""

    speech: list[np.ndarray]
    distractors: list[np.ndarray]
    sample_rate: int


@dataclass(frozen=True)
class Scene:
    """One mixed clip: ``audio`` float32 [clip samples] in [-1, 1], the event's span in seconds and what the clip
    holds; ``event`` is the event alone, as mixed (same length and gain as in ``audio``)."""

    audio: np.ndarray
    event: np.ndarray
    event_start_s: float
    event_stop_s: float
    event_snr_db: float
    num_talkers: int
    num_distractors: int


# ---------------------------------------------------------------------------------------------------------------------
# Sources: tools, SoundFont, rendering.
# ---------------------------------------------------------------------------------------------------------------------
def find_soundfont(path: str | os.PathLike | None = None) -> Path:
    """The SoundFont to render with: ``path`` when given, else the first General-MIDI SoundFont Debian installs.

    Raises:
        SourceToolError: naming the path or the packages to install.
    """
    if path is not None:
        if not Path(path).is_file():
            raise SourceToolError(f"SoundFont {path} does not exist; give a General-MIDI .sf2/.sf3 file")
        return Path(path)
    for candidate in SOUNDFONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate).resolve()
    raise SourceToolError(f"no General-MIDI SoundFont found (looked for {', '.join(SOUNDFONT_CANDIDATES)}); install "
                          f"one with `apt-get install fluid-soundfont-gm` or pass --soundfont FILE")


def _require_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SourceToolError(f"{name} is not on PATH; install the sources with `apt-get install {DEBIAN_PACKAGES}`")
    return found


def _run(command: list[str], what: str) -> bytes:
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        raise SourceToolError(f"{what} failed (exit status {result.returncode}): "
                              f"{result.stderr.decode(errors='replace').strip()[:500]}")
    return result.stdout


def tool_versions() -> dict[str, str]:
    """First line of ``--version`` of fluidsynth and espeak-ng (recorded in dataset.json)."""
    return {name: _run([_require_tool(name), "--version"], f"{name} --version").decode().strip().splitlines()[0]
            for name in ("fluidsynth", "espeak-ng")}


def render_midi(notes: Sequence[tuple[float, int, float, int, int, int]], soundfont: Path, sample_rate: int,
                total_secs: float) -> np.ndarray:
    """Render notes with fluidsynth (reverb and chorus off, so a note ends where its release ends).

    Args:
        notes: (onset_s, pitch, duration_s, velocity, program, channel) per note; a program change precedes each
            note whose program differs from the last one of its channel.
        soundfont: General-MIDI SoundFont.
        sample_rate: output rate in Hz.
        total_secs: length of the rendering (the MIDI file ends there).

    Returns:
        float32 [round(total_secs * sample_rate)], the channel mean of fluidsynth's stereo output.
    """
    try:
        import mido  # only the generator needs it
    except ImportError as err:
        raise SourceToolError("the generator writes MIDI with mido: `pip install mido` (or pip install -e .[sounddata])"
                              ) from err

    ticks_per_second = 960  # 480 ticks per quarter note at the default 120 beats per minute
    messages: list[tuple[int, int, mido.Message]] = []
    for order, (onset, pitch, duration, velocity, program, channel) in enumerate(notes):
        on = round(onset * ticks_per_second)
        messages.append((on, 2 * order, mido.Message("program_change", program=program, channel=channel)))
        messages.append((on, 2 * order + 1, mido.Message("note_on", note=pitch, velocity=velocity, channel=channel)))
        off = max(on + 1, round((onset + duration) * ticks_per_second))
        messages.append((off, -1, mido.Message("note_off", note=pitch, velocity=0, channel=channel)))
    messages.sort(key=lambda item: (item[0], item[1]))
    track = mido.MidiTrack()
    now = 0
    for tick, _, message in messages:
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=max(0, round(total_secs * ticks_per_second) - now)))
    midi = mido.MidiFile(ticks_per_beat=480)
    midi.tracks.append(track)
    fluidsynth = _require_tool("fluidsynth")
    with tempfile.TemporaryDirectory(prefix="sound_scenes_") as tmp:
        midi_path, wav_path = Path(tmp) / "notes.mid", Path(tmp) / "notes.wav"
        midi.save(midi_path)
        _run([fluidsynth, "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r", str(sample_rate), "-O", "float",
              "-T", "wav", "-F", str(wav_path), str(soundfont), str(midi_path)], f"fluidsynth on {soundfont}")
        stereo, rate = sf.read(wav_path, dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise SourceToolError(f"fluidsynth wrote {rate} Hz instead of the requested {sample_rate} Hz")
    audio = stereo.mean(axis=1)
    length = round(total_secs * sample_rate)
    return np.pad(audio, (0, max(0, length - len(audio))))[:length]


def speak(text: str, voice: str, words_per_minute: int, pitch: int, sample_rate: int) -> np.ndarray:
    """espeak-ng speech of ``text`` as float32 [samples] at ``sample_rate`` (resampled with soxr)."""
    wav = _run([_require_tool("espeak-ng"), "-v", voice, "-s", str(words_per_minute), "-p", str(pitch), "--stdout",
                text], f"espeak-ng -v {voice}")
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(audio, rate, sample_rate).astype(np.float32) if rate != sample_rate else audio


def sounding_span(audio: np.ndarray, sample_rate: int, floor_db: float = SOUNDING_DB) -> tuple[int, int]:
    """[first, last) samples of the 10 ms frames whose RMS is within ``floor_db`` dB of the loudest frame; (0, 0) for
    silence."""
    hop = max(1, sample_rate // 100)
    frames = len(audio) // hop
    if frames == 0:
        return 0, 0
    rms = np.sqrt(np.mean(audio[: frames * hop].astype(np.float64).reshape(frames, hop) ** 2, axis=1))
    if rms.max() <= 0:
        return 0, 0
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (-floor_db / 20))
    return int(loud[0] * hop), int((loud[-1] + 1) * hop)


def _fade(piece: np.ndarray, sample_rate: int) -> np.ndarray:
    """Raised-cosine fade-in and fade-out of _FADE_SECS (events and distractors never click)."""
    edge = min(int(_FADE_SECS * sample_rate), len(piece) // 2)
    if edge == 0:
        return piece
    ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)).astype(np.float32)
    piece = piece.copy()
    piece[:edge] *= ramp
    piece[len(piece) - edge :] *= ramp[::-1]
    return piece


def _note_plan(rng: np.random.Generator, sound: SoundClass, span_secs: float
               ) -> list[tuple[float, int, float, int]]:
    """(onset_s, pitch, duration_s, velocity) of one event of ``sound`` that sounds for about ``span_secs``."""
    play = 0.8 * span_secs  # the release fills the rest
    if sound.style == "note":
        return [(0.0, int(rng.integers(sound.low, sound.high + 1)), play, int(rng.integers(70, 121)))]
    count = int(rng.integers(2, 5)) if sound.style == "phrase" else int(rng.integers(2, 6))
    step = play / count
    pitch = int(rng.integers(sound.low, sound.high + 1))
    notes = []
    for k in range(count):
        notes.append((k * step, pitch, step * (0.9 if sound.style == "phrase" else 0.5), int(rng.integers(70, 121))))
        if sound.style == "phrase":
            pitch = int(np.clip(pitch + rng.choice([-1, 1]) * rng.integers(2, 8), sound.low, sound.high))
    return notes


def _cut_slots(audio: np.ndarray, spans_secs: Sequence[float], sample_rate: int) -> list[np.ndarray]:
    """The sounding part of each slot's first ``span`` seconds, faded at both ends."""
    pieces = []
    for slot, span in enumerate(spans_secs):
        first = round(slot * _SLOT_SECS * sample_rate)
        piece = audio[first : first + round(span * sample_rate)]
        start, stop = sounding_span(piece, sample_rate)
        if stop - start < 0.05 * sample_rate:
            raise SourceToolError(f"a rendered note is silent (slot {slot}); is the SoundFont a General-MIDI one?")
        pieces.append(_fade(piece[start:stop], sample_rate))
    return pieces


def render_event_bank(sound: SoundClass, count: int, rng: np.random.Generator, soundfont: Path,
                      sample_rate: int) -> list[np.ndarray]:
    """``count`` events of one class (one fluidsynth run), each float32 [0.3-1.0 s] with its silence trimmed."""
    spans = rng.uniform(*EVENT_SECS, size=count)
    notes = [(slot * _SLOT_SECS + onset, pitch, duration, velocity, sound.program, 0)
             for slot, span in enumerate(spans) for onset, pitch, duration, velocity in _note_plan(rng, sound, span)]
    audio = render_midi(notes, soundfont, sample_rate, count * _SLOT_SECS)
    return _cut_slots(audio, spans, sample_rate)


def _render_distractor_notes(rng: np.random.Generator, count: int, soundfont: Path,
                             sample_rate: int) -> list[np.ndarray]:
    """Notes of the distractor programs and drum-kit hits (one fluidsynth run)."""
    spans = rng.uniform(0.15, 1.2, size=count)
    notes = []
    for slot, span in enumerate(spans):
        onset = slot * _SLOT_SECS
        if rng.random() < 0.35:
            for k in range(int(rng.integers(1, 4))):
                notes.append((onset + k * span / 3, int(rng.choice(_DRUM_NOTES)), 0.1, int(rng.integers(60, 121)),
                              0, _DRUM_CHANNEL))
        else:
            program = int(rng.choice(_DISTRACTOR_PROGRAMS))
            notes.append((onset, int(rng.integers(40, 80)), 0.8 * span, int(rng.integers(60, 121)), program, 0))
    return _cut_slots(render_midi(notes, soundfont, sample_rate, count * _SLOT_SECS), spans, sample_rate)


def _utterance(rng: np.random.Generator, words: tuple[int, int]) -> tuple[str, str, int, int]:
    """(text, voice, words per minute, pitch) of one espeak-ng utterance."""
    text = " ".join(rng.choice(_WORDS, size=int(rng.integers(*words))))
    voice = f"{rng.choice(_LANGUAGES)}+{rng.choice(_VOICE_VARIANTS)}"
    return text, voice, int(rng.integers(130, 200)), int(rng.integers(20, 80))


def render_source_bank(seed: int, sample_rate: int, soundfont: Path, num_talkers: int = 16,
                       num_distractor_notes: int = 64, num_spoken_words: int = 16, jobs: int = 1) -> SourceBank:
    """Background speech (one 40-80 word passage per talker, each in its own language, voice, rate and pitch) and
    distractors (instrument notes, drum hits, one or two spoken words), rendered in ``jobs`` threads (the tools run
    as subprocesses)."""
    rng = np.random.default_rng([seed, 3])
    passages = [_utterance(rng, (40, 81)) for _ in range(num_talkers)]
    words = [_utterance(rng, (1, 3)) for _ in range(num_spoken_words)]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        notes = pool.submit(_render_distractor_notes, np.random.default_rng([seed, 4]), num_distractor_notes,
                            soundfont, sample_rate)
        speech = list(pool.map(lambda args: speak(*args, sample_rate), passages))
        spoken = list(pool.map(lambda args: speak(*args, sample_rate), words))
        distractors = notes.result()
    for piece in spoken:
        start, stop = sounding_span(piece, sample_rate)
        distractors.append(_fade(piece[start:stop], sample_rate))
    return SourceBank(speech=speech, distractors=distractors, sample_rate=sample_rate)


# ---------------------------------------------------------------------------------------------------------------------
# Mixing.
# ---------------------------------------------------------------------------------------------------------------------
def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _coloured_noise(rng: np.random.Generator, num: int, exponent: float, sample_rate: int) -> np.ndarray:
    """Unit-RMS noise [num] with power spectrum ~ 1 / f**exponent above 20 Hz (1: pink, 2: brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(num))
    freqs = np.fft.rfftfreq(num, 1 / sample_rate)
    spectrum /= np.maximum(freqs, 20.0) ** (exponent / 2)
    noise = np.fft.irfft(spectrum, num)
    return noise / _rms(noise)


def _background(rng: np.random.Generator, bank: SourceBank, num: int,
                babble_probability: float) -> tuple[np.ndarray, int]:
    """Unit-RMS background [num] (room tone plus babble) and the number of talkers in it."""
    background = _coloured_noise(rng, num, rng.uniform(0.5, 2.0), bank.sample_rate)
    talkers = int(rng.integers(1, 4)) if rng.random() < babble_probability else 0
    if talkers:
        babble = np.zeros(num)
        for _ in range(talkers):
            utterance = bank.speech[int(rng.integers(len(bank.speech)))]
            looped = np.tile(utterance, num // len(utterance) + 2)
            offset = int(rng.integers(len(utterance)))
            babble += rng.uniform(0.5, 1.0) * looped[offset : offset + num] / max(_rms(utterance), 1e-8)
        # Speech 0-15 dB above the room tone.
        background = background + babble / _rms(babble) * 10 ** (rng.uniform(0.0, 15.0) / 20)
    return background / _rms(background), talkers


def mix_scene(rng: np.random.Generator, event: np.ndarray, bank: SourceBank, clip_secs: float,
              event_snr_db: tuple[float, float] = (-6.0, 6.0), distractor_snr_db: tuple[float, float] = (-6.0, 6.0),
              max_distractors: int = 3, babble_probability: float = 0.8) -> Scene:
    """One clip: unit-RMS background, 0..max_distractors distractors and ``event`` at a random time.

    SNRs are RMS ratios over the sound's own span (the event or distractor alone against the background there). The
    whole clip is then scaled to a random peak level in [0.1, 0.9].

    Args:
        rng: the clip's random generator.
        event: float32 [L] samples of the event (silence trimmed), L shorter than the clip.
        bank: background speech and distractors at the clip's rate.
        clip_secs: clip length in seconds.

    Returns:
        The scene; ``event_start_s``/``event_stop_s`` are where ``event`` lies in ``audio``.
    """
    rate = bank.sample_rate
    num = round(clip_secs * rate)
    if len(event) >= num - round(0.2 * rate):
        raise ValueError(f"a {len(event) / rate:.2f} s event does not fit a {clip_secs} s clip with 0.1 s margins")
    background, talkers = _background(rng, bank, num, babble_probability)
    mixture = background.copy()
    distractors = int(rng.integers(0, max_distractors + 1))
    for _ in range(distractors):
        piece = bank.distractors[int(rng.integers(len(bank.distractors)))][: num // 2]
        first = int(rng.integers(0, num - len(piece) + 1))
        span = background[first : first + len(piece)]
        gain = _rms(span) / max(_rms(piece), 1e-8) * 10 ** (rng.uniform(*distractor_snr_db) / 20)
        mixture[first : first + len(piece)] += gain * piece
    snr_db = float(rng.uniform(*event_snr_db))
    first = int(rng.integers(round(0.1 * rate), num - round(0.1 * rate) - len(event) + 1))
    gain = _rms(background[first : first + len(event)]) / max(_rms(event), 1e-8) * 10 ** (snr_db / 20)
    event_track = np.zeros(num)
    event_track[first : first + len(event)] = gain * event
    mixture += event_track
    scale = rng.uniform(0.1, 0.9) / np.abs(mixture).max()
    return Scene(audio=(mixture * scale).astype(np.float32), event=(event_track * scale).astype(np.float32),
                 event_start_s=first / rate, event_stop_s=(first + len(event)) / rate, event_snr_db=snr_db,
                 num_talkers=talkers, num_distractors=distractors)


# ---------------------------------------------------------------------------------------------------------------------
# The dataset.
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Settings:
    """What every clip task needs besides its own events (sent to each worker once)."""

    out_dir: str
    seed: int
    clip_secs: float
    sample_rate: int
    soundfont: str
    event_snr_db: tuple[float, float]
    distractor_snr_db: tuple[float, float]
    max_distractors: int
    babble_probability: float


_WORKER: dict[str, object] = {}


def _init_worker(settings: _Settings, bank: SourceBank) -> None:
    _WORKER["settings"], _WORKER["bank"] = settings, bank


def _render_class_split(task: tuple[int, int, int]) -> list[dict]:
    """Render the events of one (split, class) and mix and write its clips; returns one row per clip."""
    split_id, class_id, count = task
    settings: _Settings = _WORKER["settings"]  # type: ignore[assignment]
    bank: SourceBank = _WORKER["bank"]  # type: ignore[assignment]
    sound = SOUND_CLASSES[class_id]
    events = render_event_bank(sound, count, np.random.default_rng([settings.seed, 1, split_id, class_id]),
                               Path(settings.soundfont), settings.sample_rate)
    split = SPLITS[split_id]
    rows = []
    for index, event in enumerate(events):
        scene = mix_scene(np.random.default_rng([settings.seed, 2, split_id, class_id, index]), event, bank,
                          settings.clip_secs, settings.event_snr_db, settings.distractor_snr_db,
                          settings.max_distractors, settings.babble_probability)
        file = f"{sound.name}/{split}_{index:05d}.wav"
        sf.write(Path(settings.out_dir) / "audio" / file, scene.audio, settings.sample_rate, subtype="PCM_16")
        rows.append({"file": file, "label": sound.name, "split": split, "uid": os.path.splitext(file)[0],
                     "event_start_s": scene.event_start_s, "event_stop_s": scene.event_stop_s,
                     "event_snr_db": round(scene.event_snr_db, 3), "num_talkers": scene.num_talkers,
                     "num_distractors": scene.num_distractors})
    return rows


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def make_sound_scenes(
    out_dir: str | Path,
    *,
    num_classes: int = 16,
    train_per_class: int = 160,
    val_per_class: int = 24,
    test_per_class: int = 48,
    clip_secs: float = 5.0,
    sample_rate: int = 16000,
    event_snr_db: tuple[float, float] = (-6.0, 6.0),
    distractor_snr_db: tuple[float, float] = (-6.0, 6.0),
    max_distractors: int = 3,
    babble_probability: float = 0.8,
    seed: int = 0,
    jobs: int | None = None,
    soundfont: str | os.PathLike | None = None,
) -> dict:
    """Render the dataset (layout in the module docstring); the same arguments and sources give identical bytes.

    Args:
        out_dir: output folder (created; files of an earlier run with the same names are overwritten).
        num_classes: the first ``num_classes`` of SOUND_CLASSES (2 to 24).
        train_per_class, val_per_class, test_per_class: clips per class of each split (val may be 0: no val.csv).
        clip_secs: clip length (at least 1.5 s).
        sample_rate: rate of the written files (and of the rendering) in Hz.
        event_snr_db, distractor_snr_db: uniform ranges of the event's and each distractor's SNR against the
            background over their own span, in dB.
        max_distractors: each clip gets 0..max_distractors distractors (uniform).
        babble_probability: share of clips with speech babble in the background.
        seed: seed of every random draw.
        jobs: worker processes (default: the CPU count); does not change the output.
        soundfont: General-MIDI SoundFont (default: the one Debian installs, see find_soundfont).

    Returns:
        Summary: ``out_dir``, ``audio_dir``, ``annotations_dir``, ``events_csv``, ``class_names``, ``num_clips``
        (per split), ``seconds`` (audio per split), ``soundfont``.

    Raises:
        ValueError: an argument is out of range.
        SourceToolError: fluidsynth, espeak-ng or a SoundFont is missing or failed.
    """
    if not 2 <= num_classes <= len(SOUND_CLASSES):
        raise ValueError(f"num_classes={num_classes}: choose 2 to {len(SOUND_CLASSES)} classes")
    counts = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    if train_per_class < 1 or test_per_class < 1 or val_per_class < 0:
        raise ValueError(f"clips per class {counts}: train and test need at least 1, val at least 0")
    if clip_secs < EVENT_SECS[1] + 0.5:
        raise ValueError(f"clip_secs={clip_secs}: clips must be at least {EVENT_SECS[1] + 0.5} s to hold an event")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate={sample_rate}: use at least 8000 Hz")
    for name, (low, high) in (("event_snr_db", event_snr_db), ("distractor_snr_db", distractor_snr_db)):
        if low > high:
            raise ValueError(f"{name}=({low}, {high}): the lower bound is above the upper one")
    if not 0.0 <= babble_probability <= 1.0 or max_distractors < 0:
        raise ValueError(f"babble_probability={babble_probability} must be in [0, 1] and max_distractors="
                         f"{max_distractors} at least 0")
    font = find_soundfont(soundfont)
    versions = tool_versions()
    out_dir = Path(out_dir)
    classes = SOUND_CLASSES[:num_classes]
    for sound in classes:
        (out_dir / "audio" / sound.name).mkdir(parents=True, exist_ok=True)
    annotations = out_dir / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or os.cpu_count() or 1)
    bank = render_source_bank(seed, sample_rate, font, jobs=jobs)
    settings = _Settings(str(out_dir), seed, clip_secs, sample_rate, str(font), tuple(event_snr_db),
                         tuple(distractor_snr_db), max_distractors, babble_probability)
    tasks = [(split_id, class_id, counts[split]) for split_id, split in enumerate(SPLITS)
             for class_id in range(num_classes) if counts[split]]
    if jobs == 1:
        _init_worker(settings, bank)
        results = [_render_class_split(task) for task in tasks]
    else:
        with ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(settings, bank)) as pool:
            results = list(pool.map(_render_class_split, tasks))
    rows = [row for part in results for row in part]
    for split in SPLITS:
        split_rows = [row for row in rows if row["split"] == split]
        if split_rows:
            _write_csv(annotations / f"{split}.csv", ("file", "label"), split_rows)
    (annotations / "classes.txt").write_text("".join(f"{sound.name}\n" for sound in classes), encoding="utf-8")
    events_csv = annotations / "events.csv"
    _write_csv(events_csv, ("uid", "event_start_s", "event_stop_s"),
               [{**row, "event_start_s": repr(row["event_start_s"]), "event_stop_s": repr(row["event_stop_s"])}
                for row in rows])
    _write_csv(annotations / "scenes.csv", ("uid", "split", "label", "event_snr_db", "num_talkers", "num_distractors"),
               rows)
    num_clips = {split: sum(row["split"] == split for row in rows) for split in SPLITS}
    description = {
        "generator": "playitback.synthetic.sound_scenes", "seed": seed, "clip_secs": clip_secs, "sample_rate": sample_rate,
        "num_clips": num_clips, "classes": [asdict(sound) for sound in classes], "event_snr_db": list(event_snr_db),
        "distractor_snr_db": list(distractor_snr_db), "max_distractors": max_distractors,
        "babble_probability": babble_probability, "soundfont": font.name, "tools": versions,
    }
    (out_dir / "dataset.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return {
        "out_dir": out_dir,
        "audio_dir": out_dir / "audio",
        "annotations_dir": annotations,
        "events_csv": events_csv,
        "class_names": [sound.name for sound in classes],
        "num_clips": num_clips,
        "seconds": {split: count * clip_secs for split, count in num_clips.items()},
        "soundfont": font,
    }

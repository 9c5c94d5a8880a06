"""Audio storage: the decode rate of one worker and the loader rate of files vs shards, and the bytes per clip of each.

    .venv/bin/python -m bench.storage                        # 256 generated 10 s clips, loader at 8 and 16 workers
    .venv/bin/python -m bench.storage --clips 32 --draws 128 --workers 2

Prints one JSON line. The same generated clips (``playitback.synthetic.demo``: 10 s at 16 kHz, AudioSet's clip length)
are stored six ways:

* files: one file per clip, 16-bit WAV, FLAC, and MP3 (80 kbit/s constant bit rate), read by FileAudioReader;
* shards (tools/pack_audio.py): ``pcm16`` (raw int16, no decoding) and the FLAC and MP3 files' bytes (``source``
  storage, decoded in the worker), read by ShardAudioReader.

Three measurements, side by side in one run:

* ``decode``: one process, one thread, every clip read whole through the reader (what a DataLoader worker does per
  clip besides cropping), best of --repeats passes; clips/s wall time and clips per CPU-second (= per core).
* ``loader``: the training loader of configs/AudioSet/MViTv2_B.yaml (its balanced sampler drawing --draws clips,
  crops of the whole clip, front-end on the device: the workers decode and crop only) at each --workers count, the
  first batch not timed. With more workers than cores the cores are the limit, so the per-core figure is clips/s over
  min(workers, cores), next to clips per CPU-second of the main process and its workers together.
* ``sizes``: bytes per clip of every storage, for the generated clips and, when ../shared/data/audio is there, for
  real 16 kHz clips (generated noise compresses worse than real audio).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from bench.data import time_one_pass
from bench.model import machine
from playitback.config import load_config
from playitback.data.annotations import read_annotations, write_records_csv
from playitback.data.audio_io import FileAudioReader
from playitback.data.records import ClipRecord
from playitback.data.shards import ShardAudioReader, pack_clips
from playitback.synthetic.demo import make_demo_dataset

REPO = Path(__file__).resolve().parents[1]

CONFIG = REPO / "configs" / "AudioSet" / "MViTv2_B.yaml"
RATE = 16000
FILE_FORMATS = {"wav": ("WAV", "PCM_16", {}), "flac": ("FLAC", "PCM_16", {}),
                "mp3": ("MP3", "MPEG_LAYER_III", {"compression_level": 0.5, "bitrate_mode": "CONSTANT"})}
# (name, where the audio is, reader extension); shards of FLAC and MP3 hold those files' bytes.
STORAGES = (("files wav", "wav", ".wav"), ("files flac", "flac", ".flac"), ("files mp3", "mp3", ".mp3"),
            ("shards pcm16", "pack_pcm16", ""), ("shards flac", "pack_flac", ""), ("shards mp3", "pack_mp3", ""))
REAL_CLIPS = REPO.parent / "shared" / "data" / "audio"


def write_storages(root: Path, clips: int, seconds: float) -> tuple[list[ClipRecord], dict[str, Any]]:
    """The generated clips as flat files of each format and as the three packs; returns the records (AudioSet layout:
    source = file stem) and the packing reports."""
    make_demo_dataset(root / "demo", num_classes=8, train_per_class=-(-clips // 8), test_per_class=1,
                      clip_secs=seconds, seed=0)
    demo = read_annotations(root / "demo" / "annotations" / "train.csv", "vggsound")
    records = [ClipRecord(uid=r.uid, source=r.uid, labels=r.labels) for r in demo]
    for record, original in zip(records, demo):
        samples = sf.read(root / "demo" / "audio" / f"{original.source}.wav", dtype="int16")[0]
        for ext, (fmt, subtype, options) in FILE_FORMATS.items():
            (root / ext).mkdir(exist_ok=True)
            sf.write(root / ext / f"{record.source}.{ext}", samples, RATE, format=fmt, subtype=subtype, **options)
    write_records_csv(records, root / "annotations" / "train.csv")
    sources = [r.source for r in records]
    packing = {}
    for name, folder, ext in (("pcm16", "wav", ".wav"), ("flac", "flac", ".flac"), ("mp3", "mp3", ".mp3")):
        report = pack_clips(FileAudioReader(root / folder, ext, RATE), sources, root / f"pack_{name}",
                            storage="pcm16" if name == "pcm16" else "source", clips_per_shard=64, progress=False)
        packing[name] = {"clips_per_s": round(report.written_clips / report.seconds, 1),
                         "stored_bytes": report.stored_bytes}
    return records, packing


def _reader(root: Path, folder: str, ext: str) -> FileAudioReader | ShardAudioReader:
    return ShardAudioReader(root / folder, RATE) if folder.startswith("pack") else FileAudioReader(root / folder, ext,
                                                                                                    RATE)


def decode_rates(root: Path, records: list[ClipRecord], repeats: int) -> list[dict[str, Any]]:
    """Clips/s of reading every clip whole, one thread, per storage (best of `repeats` passes)."""
    torch.set_num_threads(1)
    rows = []
    for name, folder, ext in STORAGES:
        reader = _reader(root, folder, ext)
        best_wall = best_cpu = float("inf")
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            for record in records:
                reader(record)
            best_wall = min(best_wall, time.perf_counter() - wall)
            best_cpu = min(best_cpu, time.process_time() - cpu)
        rows.append({"storage": name, "clips_per_s": round(len(records) / best_wall, 1),
                     "clips_per_cpu_s": round(len(records) / best_cpu, 1),
                     "ms_per_clip": round(1e3 * best_cpu / len(records), 3)})
    return rows


def loader_rates(root: Path, workers: list[int], draws: int, batch: int, seconds: float) -> list[dict[str, Any]]:
    """Clips/s of the AudioSet training loader (decode and crop in the workers) per storage and worker count."""
    cores = os.cpu_count() or 1
    rows = []
    for name, folder, ext in STORAGES:
        if name == "files wav":
            continue  # AudioSet is distributed compressed; WAV files are in the decode table
        for count in workers:
            cfg = load_config(str(CONFIG), [
                "NUM_GPUS", "0", "AUDIOSET.AUDIO_DATA_DIR", str(root / folder), "AUDIOSET.AUDIO_EXT", ext or ".flac",
                "AUDIOSET.ANNOTATIONS_DIR", str(root / "annotations"), "AUDIOSET.TRAIN_LIST", "train.csv",
                "DATA.SAMPLES_PER_EPOCH", str(draws), "DATA.FRONTEND", "device", "DATA_LOADER.NUM_WORKERS", str(count),
                "DATA_LOADER.PIN_MEMORY", "False", "TRAIN.BATCH_SIZE", str(batch), "AUDIO_DATA.CLIP_SECS", str(seconds),
            ])
            timed = time_one_pass(cfg)
            rate = timed["clips_timed"] / timed["seconds"]
            rows.append({"storage": name, "workers": count, "clips_per_s": round(rate, 1),
                         "clips_per_s_per_core": round(rate / min(count, cores), 1),
                         "clips_per_cpu_s": round(timed["clips_total"] / timed["cpu_s"], 1),
                         "batch_shape": list(timed["first"]["waveform"].shape)})
    return rows


def sizes(root: Path, records: list[ClipRecord]) -> dict[str, Any]:
    """Bytes per clip of each storage: the generated clips, and the real clips when they are present."""
    generated = {}
    for name, folder, ext in STORAGES:
        files = list((root / folder / "shards").glob("*.h5")) if folder.startswith("pack") else \
            list((root / folder).glob(f"*{ext}"))
        generated[name] = round(sum(f.stat().st_size for f in files) / len(records))
    real = None
    if REAL_CLIPS.is_dir() and list(REAL_CLIPS.glob("*.wav")):
        real = {}
        clips = sorted(REAL_CLIPS.glob("*.wav"))
        for ext, (fmt, subtype, options) in FILE_FORMATS.items():
            total = 0
            for clip in clips:
                with tempfile.NamedTemporaryFile(suffix=f".{ext}") as out:
                    sf.write(out.name, sf.read(clip, dtype="int16")[0], RATE, format=fmt, subtype=subtype, **options)
                    total += Path(out.name).stat().st_size
            real[ext] = round(total / len(clips))
        real["clips"] = len(clips)
    return {"generated_bytes_per_clip": generated, "real_bytes_per_clip": real}


def main() -> None:
    """Generate and store the clips, time decoding and loading, print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=256, help="generated clips (each stored six ways)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds")
    parser.add_argument("--repeats", type=int, default=3, help="decode passes (the best is reported)")
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 16], help="loader worker counts")
    parser.add_argument("--draws", type=int, default=2048, help="clips drawn per loader pass")
    parser.add_argument("--batch", type=int, default=16, help="loader batch size")
    args = parser.parse_args()
    if args.draws < 2 * args.batch * max(args.workers):
        parser.error(f"--draws ({args.draws}) must be at least two batches per worker ({2 * args.batch} x "
                     f"{max(args.workers)}): the loader must run past its start-up")
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="playitback_bench_storage_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        records, packing = write_storages(root, args.clips, args.seconds)
        prepare_s = time.perf_counter() - start
        decode = decode_rates(root, records, args.repeats)
        loader = loader_rates(root, args.workers, args.draws, args.batch, args.seconds)
        stored = sizes(root, records)
    print(json.dumps({
        "bench": "storage", "clips": len(records), "seconds": args.seconds, "sample_rate": RATE, "draws": args.draws,
        "batch": args.batch, "config": str(CONFIG.relative_to(REPO)), **machine(), "load_average_before": load_before,
        "prepare_s": round(prepare_s, 1), "packing": packing, "decode": decode, "loader": loader, **stored,
    }))


if __name__ == "__main__":
    main()

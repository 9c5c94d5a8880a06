"""EPIC-KITCHENS inputs (issue 12, item 12): the HDF5 rate is checked against the annotations, and actions shorter than
the crop are padded as auditory-slow-fast pads them (the last frame repeated), not with blocks of ln(1e-6)."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bench.librosa_reference import log_mel_reference
from engine_utils import REPO, TINY_MODEL
from playitback.config import load_config
from playitback.data.audio_io import AudioRateError
from playitback.data.build import build_dataset
from playitback.engine.build import build_task
from playitback.models import build_model

# (video, seconds of audio, actions (start, stop)): the last action of each video ends near its end, as in EPIC.
VIDEOS = [("P01_01", 12.0, [(0.5, 1.1), (3.0, 6.5), (9.0, 11.8)]),
          ("P01_02", 8.0, [(1.0, 2.2), (6.0, 7.9)]),
          ("P02_01", 10.0, [(2.0, 2.5), (4.0, 9.95)])]


def _write(root: Path, rate: int, attribute: bool) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    hdf5 = root / f"audio_{rate}.hdf5"
    with h5py.File(hdf5, "w") as handle:
        for video, seconds, _ in VIDEOS:
            wave = (rng.standard_normal(int(seconds * rate)) * 3000).astype(np.int16)
            dataset = handle.create_dataset(video, data=wave)
            if attribute:
                dataset.attrs["sample_rate"] = rate
    lists = root / "lists"
    lists.mkdir(exist_ok=True)
    rows = ["narration_id,participant_id,video_id,start_timestamp,stop_timestamp,verb,verb_class,noun,noun_class"]
    for video, _, actions in VIDEOS:
        for i, (start, stop) in enumerate(actions):
            rows.append(f"{video}_{i},{video[:3]},{video},{_stamp(start)},{_stamp(stop)},take,{i},cup,{i + 1}")
    for name in ("EPIC_100_train.csv", "EPIC_100_validation.csv"):
        (lists / name).write_text("\n".join(rows) + "\n")
    return hdf5, lists


def _stamp(seconds: float) -> str:
    return f"00:{int(seconds // 60):02d}:{seconds % 60:05.2f}"


def _cfg(hdf5: Path, lists: Path, *opts: str):
    return load_config(REPO / "configs/EPIC-KITCHENS/PlayItBackX1.yaml", [
        "NUM_GPUS", "0", *TINY_MODEL, "DECODER.DEPTH", "2", "MODEL.MULTITASK_CLASSES", "[5, 5]",
        "EPICKITCHENS.AUDIO_DATA_FILE", str(hdf5), "EPICKITCHENS.ANNOTATIONS_DIR", str(lists),
        "DATA_LOADER.NUM_WORKERS", "0", *opts])


def test_24khz_file_without_attribute_read_at_16khz_fails_naming_24000(tmp_path: Path) -> None:
    hdf5, lists = _write(tmp_path, 24000, attribute=False)
    with pytest.raises(AudioRateError, match=r"every one of its 3 recordings runs at least 1\.5\dx longer .* most "
                                             r"likely 24000 Hz.*EPICKITCHENS.AUDIO_SAMPLE_RATE 24000"):
        build_dataset(_cfg(hdf5, lists), "train")
    # Told the rate, the same file reads: each action comes back at the config's 16 kHz with its own length.
    dataset = build_dataset(_cfg(hdf5, lists, "EPICKITCHENS.AUDIO_SAMPLE_RATE", "24000"), "train")
    record = dataset.records[1]
    assert dataset.reader(record).shape[0] == pytest.approx((record.stop_s - record.start_s) * 16000, abs=2)


def test_16khz_file_read_at_24khz_fails_on_the_recordings_that_end_too_early(tmp_path: Path) -> None:
    hdf5, lists = _write(tmp_path, 16000, attribute=False)
    with pytest.raises(AudioRateError, match=r"3 of 3 recordings end before their last annotated action \(P01_01: "
                                             r"8\.0 s of audio, last action stops at 11\.8 s\).*16000 Hz"):
        build_dataset(_cfg(hdf5, lists, "AUDIO_DATA.SAMPLING_RATE", "24000"), "train")
    # A file with the attribute is read at its rate whatever the config's.
    hdf5, lists = _write(tmp_path, 16000, attribute=True)
    assert len(build_dataset(_cfg(hdf5, lists, "AUDIO_DATA.SAMPLING_RATE", "24000"), "train")) == 7


def test_recording_absent_from_the_hdf5_is_left_out_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    """A video id the HDF5 lacks (item 3): its actions are left out at start, counted per split and listed in
    OUTPUT_DIR/missing_<split>.txt as "uid<TAB>file [video]"; below DATA.MIN_FOUND_FRACTION the run stops."""
    from playitback.data.build import MissingAudioError

    hdf5, lists = _write(tmp_path, 16000, attribute=True)
    with h5py.File(hdf5, "a") as handle:
        del handle["P01_02"]
    out = tmp_path / "run"
    out.mkdir()
    with caplog.at_level("INFO", logger="playitback.data.build"):
        dataset = build_dataset(_cfg(hdf5, lists), "val", output_dir=out)
    assert [r.uid for r in dataset.records] == ["P01_01_0", "P01_01_1", "P01_01_2", "P02_01_0", "P02_01_1"]
    assert dataset.num_listed == 7
    assert f"val: 5 of 7 clips found under {hdf5} (2 missing, listed in {out / 'missing_val.txt'})" in caplog.text
    assert (out / "missing_val.txt").read_text().splitlines() == [f"P01_02_{i}\t{hdf5} [P01_02]" for i in range(2)]
    with pytest.raises(MissingAudioError, match=r"val: only 5 of 7 listed clips .*first absent: .*\[P01_02\]"):
        build_dataset(_cfg(hdf5, lists, "DATA.MIN_FOUND_FRACTION", "0.8"), "val")


def test_short_action_is_edge_padded_like_auditory_slow_fast(tmp_path: Path) -> None:
    """An action of 0.6 s in a 1.999 s crop: every playback equals the log-mel of the action alone (centred STFT,
    librosa) with its last frame repeated (numpy "edge"), in the workers and on the device alike."""
    hdf5, lists = _write(tmp_path, 16000, attribute=True)
    for frontend in ("workers", "device"):
        cfg = _cfg(hdf5, lists, "AUDIO_DATA.FRAMES0", "64", "DATA.FRONTEND", frontend)
        dataset = build_dataset(cfg, "val")
        index = next(i for i, r in enumerate(dataset.records) if r.uid == "P01_01_0")
        item = dataset[index]
        segment = dataset.reader(dataset.records[index])
        assert item["valid_samples"] == segment.shape[0] == 9600
        if frontend == "workers":
            playbacks = item["playbacks"]
        else:
            task = build_task(cfg, build_model(cfg), torch.device("cpu"), train=False)
            batch = {"waveform": item["waveform"][None], "valid_samples": torch.tensor([item["valid_samples"]]),
                     "label": item["label"][None]}
            playbacks = [p[0] for p in task.inputs(batch, train=False)[0]]
        for i, playback in enumerate(playbacks):
            frames = 64 * (i + 1)
            hop = round(31984 / frames)
            reference = log_mel_reference(segment, 16000, hop)  # 1 + 9600 // hop frames
            reference = np.pad(reference, ((0, frames - reference.shape[0]), (0, 0)), mode="edge")
            assert np.abs(playback.numpy() - reference).max() < 1e-3, (frontend, i)
            assert (playback[-1] > np.log(1e-6) + 1).any()  # not the log-mel of silence


def test_zeros_pad_mode_keeps_the_log_mel_of_silence(tmp_path: Path) -> None:
    hdf5, lists = _write(tmp_path, 16000, attribute=True)
    cfg = _cfg(hdf5, lists, "AUDIO_DATA.FRAMES0", "64", "DATA.FRONTEND", "workers", "AUDIO_DATA.PAD_MODE", "zeros")
    dataset = build_dataset(cfg, "val")
    item = dataset[next(i for i, r in enumerate(dataset.records) if r.uid == "P01_01_0")]
    assert torch.allclose(item["playbacks"][0][-1], torch.full((128,), float(np.log(1e-6))))

"""Annotated events (DATA.EVENTS_FILE) and the oracle replay (MODEL.REPLAY events)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import playitback.models.playitback as playitback_module
from engine_utils import TINY_MODEL, make_tiny_dataset, run_net, run_opts
from playitback.config import ConfigError, load_config
from playitback.data.build import build_dataset
from playitback.data.events import event_frame_mask, load_event_spans
from playitback.data.spectrogram import playback_pyramid
from playitback.models import build_model

REPO = Path(__file__).resolve().parents[1]
PLAYITBACK = "configs/Demo/PlayItBackX2.yaml"


def test_event_frames_are_those_whose_centre_is_inside_an_event() -> None:
    # 8 frames at a 0.25 s hop over a crop starting at 0.5 s: centred STFT frames at 0.5, 0.75, ..., 2.25 s.
    mask = event_frame_mask([(1.0, 1.5)], crop_start_s=0.5, clip_secs=2.0, num_frames=8)
    assert mask.tolist() == [False, False, True, True, False, False, False, False]
    mask = event_frame_mask([(0.0, 0.7), (2.2, 9.0), (5.0, 6.0)], crop_start_s=0.5, clip_secs=2.0, num_frames=8)
    assert mask.tolist() == [True, False, False, False, False, False, False, True]
    # An event from 1.1 to 1.3 s holds one frame centre: 1.25 s, frame 3.
    assert event_frame_mask([(1.1, 1.3)], 0.5, 2.0, 8).tolist() == [False] * 3 + [True] + [False] * 4
    assert not event_frame_mask([], 0.0, 2.0, 8).any()


def test_event_mask_marks_the_frame_where_the_spectrogram_shows_the_event() -> None:
    """A click at sample n is loudest in the playback-0 frame centred nearest n; an event of a quarter hop around the
    click marks exactly that frame (frame centres at (k + 0.5) * hop would mark none)."""
    rate, frames0, hop = 16000, 16, 2000
    for click in (5 * hop, 9 * hop + 100):
        wave = torch.zeros(frames0 * hop)
        wave[click] = 1.0
        loudest = playback_pyramid(wave, rate, 1, frames0=frames0)[0].exp().sum(dim=1).argmax().item()
        spans = [((click - hop / 4) / rate, (click + hop / 4) / rate)]
        marked = event_frame_mask(spans, 0.0, frames0 * hop / rate, frames0).nonzero().flatten().tolist()
        assert marked == [loudest] == [round(click / hop)]


def test_dataset_event_mask_follows_the_rounded_hop(tmp_path: Path) -> None:
    """With the shipped 1.999 s crop and T0 = 400 the hop rounds to 80 samples, so frame k is centred on sample 80 k,
    not on k * 1.999 / 400 s (1 ms early at the last frame): an event of 20 samples around the centre of frame 399
    marks that frame, the one where the dataset's own spectrogram shows a click placed there."""
    import soundfile as sf

    rate, hop, frame = 16000, 80, 399
    wave = np.zeros(round(1.999 * rate), dtype=np.float32)
    wave[frame * hop] = 1.0
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "click.wav", wave, rate)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).write_text("file,label\nclick.wav,a\n")
    click_s = frame * hop / rate
    (tmp_path / "events.csv").write_text(f"uid,event_start_s,event_stop_s\nclick,{click_s - 10 / rate},"
                                         f"{click_s + 10 / rate}\n")
    cfg = load_config(REPO / "configs/Demo/MViT_pretrain.yaml", [
        "NUM_GPUS", "0", "TRAIN.DATASET", "custom", "TEST.DATASET", "custom", "MODEL.NUM_CLASSES", "2",
        "CUSTOM.AUDIO_DATA_DIR", str(tmp_path / "audio"), "CUSTOM.ANNOTATIONS_DIR", str(tmp_path),
        "AUDIO_DATA.CLIP_SECS", "1.999", "AUDIO_DATA.FRAMES0", "400", "DATA.FRONTEND", "workers",
        "DATA.EVENTS_FILE", str(tmp_path / "events.csv")])
    item = build_dataset(cfg, "val")[0]
    assert item["crop_start_s"] == 0.0
    assert item["event_mask"].nonzero().flatten().tolist() == [frame]
    assert item["playbacks"][0].exp().sum(dim=1).argmax().item() == frame


def test_events_file_rows_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    pd.DataFrame({"uid": ["a", "a", "007"], "event_start_s": [0.5, 2.0, 1.0],
                  "event_stop_s": [1.0, 2.5, 1.5]}).to_csv(path, index=False)
    assert load_event_spans(path) == {"a": [(0.5, 1.0), (2.0, 2.5)], "007": [(1.0, 1.5)]}
    with pytest.raises(FileNotFoundError, match="DATA.EVENTS_FILE"):
        load_event_spans(tmp_path / "missing.csv")
    pd.DataFrame({"uid": ["a"], "start": [0.5], "event_stop_s": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['event_start_s'\]"):
        load_event_spans(path)
    pd.DataFrame({"uid": ["a"], "event_start_s": [1.5], "event_stop_s": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="stops .* before it starts"):
        load_event_spans(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("events_demo"))


def test_event_masks_fall_on_the_louder_frames_of_the_demo_clips(data: Path) -> None:
    """The demo hides a louder event in background noise: on its own audio, the masked frames carry more energy than
    the rest in most clips (a random mask would in about half)."""
    cfg = load_config(REPO / PLAYITBACK, [
        "NUM_GPUS", "0", "VGGSOUND.AUDIO_DATA_DIR", str(data / "audio"), "VGGSOUND.ANNOTATIONS_DIR",
        str(data / "annotations"), *TINY_MODEL, "DATA.FRONTEND", "workers",
        "DATA.EVENTS_FILE", str(data / "annotations" / "events.csv")])
    dataset = build_dataset(cfg, "train")
    louder = 0
    for index in range(len(dataset)):
        item = dataset[index]
        mask, energy = item["event_mask"], item["playbacks"][0].mean(dim=1)
        assert mask.shape == (cfg.AUDIO_DATA.FRAMES0,) and mask.any() and not mask.all()
        louder += int(energy[mask].mean() > energy[~mask].mean())
    assert louder >= 0.75 * len(dataset)


def test_replay_events_replace_the_salient_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """With MODEL.REPLAY events the given playback-0 frames are replayed at the first playback, as if the saliency had
    chosen them (the same logits as a model whose saliency mask is patched to them)."""
    cfg = load_config(REPO / PLAYITBACK, ["NUM_GPUS", "0", *TINY_MODEL, "MODEL.REPLAY", "events",
                                          "DATA.EVENTS_FILE", "events.csv", "MODEL.PLAYBACK", "1", "DECODER.DEPTH", "2"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    frames0 = cfg.AUDIO_DATA.FRAMES0
    playbacks = [torch.randn(2, frames0 * (i + 1), 128) for i in range(2)]
    masks = torch.zeros(2, frames0, dtype=torch.bool)
    masks[0, 3:7] = True
    masks[1, 10:12] = True
    with torch.no_grad():
        given = model(playbacks, replay_masks=masks)
        model.replay_source = "saliency"
        monkeypatch.setattr(playitback_module, "saliency_mask", lambda saliency, budget=0.0: masks)
        reference = model(playbacks)
    assert torch.equal(given.replay_masks, masks[:, None])
    assert torch.equal(given.logits, reference.logits)
    with pytest.raises(ValueError, match="replay_masks must be given exactly when replay_source is 'events'"):
        model(playbacks, replay_masks=masks)


def test_config_refuses_replay_events_without_events() -> None:
    with pytest.raises(ConfigError, match="MODEL.REPLAY events .* needs DATA.EVENTS_FILE"):
        load_config(REPO / PLAYITBACK, ["MODEL.REPLAY", "events"])
    with pytest.raises(ConfigError, match="MODEL.REPLAY is .oracle.; choose one of"):
        load_config(REPO / PLAYITBACK, ["MODEL.REPLAY", "oracle"])


def test_oracle_run_replays_exactly_the_annotated_events(data: Path, tmp_path: Path) -> None:
    events = data / "annotations" / "events.csv"
    opts = run_opts(data, tmp_path, epochs=1) + ["DATA.EVENTS_FILE", str(events), "MODEL.REPLAY", "events"]
    run_net(PLAYITBACK, opts)
    run_net(PLAYITBACK, opts + ["TRAIN.ENABLE", "False", "TEST.ENABLE", "True", "TEST.SAVE_SEGMENTS", "True",
                                "TEST.CHECKPOINT_SELECT", "last"])
    spans = load_event_spans(events)
    frame_s = 2.0 / 16  # CLIP_SECS / FRAMES0 of the tiny runs
    rows = [json.loads(line) for line in (tmp_path / "scores" / "segments.jsonl").read_text().splitlines() if line]
    assert rows and {row["playback"] for row in rows} == {1, 2}
    for row in rows:
        (start, stop), = spans[row["video"]]
        if row["playback"] == 1:
            # Playback 1 replays the stretch of the event's playback-0 frames: the event within half a frame.
            (segment,) = row["segments"]
            assert segment[0] == pytest.approx(start, abs=frame_s / 2)
            assert segment[1] == pytest.approx(stop, abs=frame_s / 2)
        else:
            # Later playbacks replay the composite frames showing event time; a frame that stands for time the
            # resize dropped (at the crop's end) may stretch past the event, but the event is always covered.
            first, last = row["segments"][0][0], row["segments"][-1][1]
            assert first <= start + frame_s / 2 and last >= stop - frame_s / 2
            inside = sum(max(0.0, min(e, stop) - max(s, start)) for s, e in row["segments"])
            assert inside >= 0.5 * sum(e - s for s, e in row["segments"])

"""tools/hop_detail.py: the share of a finer playback that playback 0's hop does not predict."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hop_detail
from engine_utils import REPO


def test_detail_is_the_residual_energy_over_the_temporal_variance() -> None:
    base = torch.tensor([[0.0], [2.0], [4.0]])  # T0 = 3 frames at hop 2: read at hop 1 it is 0, 1, 2, 3, 4, 4
    finer = torch.tensor([[0.0], [1.0], [3.0], [3.0], [4.0], [4.0]])  # one frame off by 1
    mask = torch.tensor([False, False, True, True, False, False])
    [sums] = hop_detail.detail_sums([base, finer], [base, base], [2, 1], [None, mask])
    # all frames: residual 1; variance about the mean 2.5: 6.25 + 2.25 + 0.25 + 0.25 + 2.25 + 2.25 = 13.5
    # masked frames 2 and 3: residual 1, variance 0.25 + 0.25
    torch.testing.assert_close(sums, torch.tensor([[1.0, 13.5], [1.0, 0.5]], dtype=torch.float64))


def _detail(tiny_data: Path, tmp_path: Path, window_ms: str, capsys: pytest.CaptureFixture) -> dict[str, dict]:
    status = hop_detail.main(["--cfg", str(REPO / "configs/Demo/PlayItBackX2.yaml"),
                              "VGGSOUND.AUDIO_DATA_DIR", str(tiny_data / "audio"),
                              "VGGSOUND.ANNOTATIONS_DIR", str(tiny_data / "annotations"),
                              "DATA.EVENTS_FILE", str(tiny_data / "annotations" / "events.csv"),
                              "AUDIO_DATA.CLIP_SECS", "2.0", "MODEL.NUM_CLASSES", "4",
                              "AUDIO_DATA.WINDOW_LENGTH", window_ms, "OUTPUT_DIR", str(tmp_path)])
    assert status == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return {line["window_scaling"]: line for line in lines}


@pytest.mark.parametrize("window_ms", ["20", "80"])
def test_a_window_longer_than_the_hop_leaves_the_finer_hop_little_to_add(tiny_data: Path, tmp_path: Path,
                                                                          window_ms: str,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """2 s demo clips, T0 = 64 (a 31 ms hop at playback 0): an 80 ms window smooths the spectrogram so that playback
    0 predicts all but a few % of the finer playbacks; a 20 ms window, shorter than the hop, leaves them a quarter
    or more; shrinking the window with the hop gives the 80 ms front-end its detail back."""
    figures = _detail(tiny_data, tmp_path, window_ms, capsys)
    fixed, hop = figures["fixed"], figures["hop"]
    assert fixed["window_ms"] == [float(window_ms)] * 3 and hop["window_ms"][0] == float(window_ms)
    assert hop["window_ms"][1] == float(window_ms) / 2
    if window_ms == "80":
        assert fixed["detail_p2"] < 0.1 and fixed["detail_p2_in_events"] < 0.1
        assert hop["detail_p2"] > 3 * fixed["detail_p2"]
    else:
        assert fixed["detail_p2"] > 0.2
    assert hop["detail_p2"] > hop["detail_p1"] > 0

"""Anytime inference (playitback/anytime.py, TEST.EXIT_POLICY, tools/anytime.py): the confidences, exits, costs and
calibration against hand-computed values; the property that makes an exit valid (playback p's logits do not depend
on the later playbacks); and the tool end to end on a tiny trained run."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_utils import REPO, TINY_MODEL, make_tiny_dataset, metrics, run_net, run_opts
from playitback.anytime import (
    anytime_logits,
    anytime_point,
    calibrate_threshold,
    exit_confidence,
    exit_playbacks,
    playback_costs,
)
from playitback.config import ConfigError, load_config
from playitback.data.labels import LabelSpace
from playitback.models import build_model


def test_confidences_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]))
    torch.testing.assert_close(exit_confidence(logits, [3], False, "max_prob"), torch.tensor([0.7, 0.4]))
    torch.testing.assert_close(exit_confidence(logits, [3], False, "margin"), torch.tensor([0.5, 0.05]))
    # Two tasks (verb 2, noun 3): the less sure task decides.
    two = torch.cat([torch.log(torch.tensor([[0.9, 0.1]])), torch.log(torch.tensor([[0.5, 0.3, 0.2]]))], dim=1)
    torch.testing.assert_close(exit_confidence(two, [2, 3], False, "max_prob"), torch.tensor([0.5]))
    # Multi-label: the mean over classes of max(p, 1 - p), or of |2p - 1|.
    probs = torch.tensor([[0.9, 0.2, 0.5]])
    multi = torch.logit(probs)
    torch.testing.assert_close(exit_confidence(multi, [3], True, "max_prob"), torch.tensor([(0.9 + 0.8 + 0.5) / 3]))
    torch.testing.assert_close(exit_confidence(multi, [3], True, "margin"), torch.tensor([(0.8 + 0.6 + 0.0) / 3]))
    with pytest.raises(ValueError, match="exit policy must be one of"):
        exit_confidence(logits, [3], False, "none")


def test_exits_and_their_predictions() -> None:
    confidence = torch.tensor([[0.95, 0.2, 0.5, 0.1],
                               [0.99, 0.95, 0.1, 0.3],
                               [0.0, 0.0, 0.99, 0.2]])  # [S=3, N=4]
    exits = exit_playbacks(confidence, 0.9)
    assert exits.tolist() == [0, 1, 2, 2]  # the last playback answers whatever its confidence
    playback_logits = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    fused = -torch.ones(4, 2)
    chosen = anytime_logits(playback_logits, fused, exits)
    torch.testing.assert_close(chosen, torch.stack([playback_logits[0, 0], playback_logits[1, 1], fused[2], fused[3]]))


def test_costs_and_calibration_by_hand() -> None:
    # Encoder pass 10, saliencies 2 each, the rest 6 over 3 playbacks: total 3 * 10 + 3 * 2 + 6 = 42.
    flops = {"total": 42, "encoder_pass": 10, "saliency_0": 2, "saliency_1": 2, "saliency_2": 2}
    costs = playback_costs(flops, 3)
    assert costs == pytest.approx([10 + 0 + 2, 20 + 2 + 4, 30 + 4 + 6, 42])
    confidence = torch.tensor([[0.95, 0.5, 0.8, 0.3],
                               [0.0, 0.96, 0.2, 0.1],
                               [0.0, 0.0, 0.0, 0.0]])
    # Exits cost 12, 26 and (to the end) 42. At 0.8: clips stop at 0, 1, 0, end: mean (12 + 26 + 12 + 42) / 4 = 23;
    # at the next candidate, 0.95: 0, 1, end, end: 30.5, over the target of 0.6 * 42 = 25.2.
    threshold = calibrate_threshold(confidence, costs, 0.6)

    def mean(threshold: float) -> float:
        return sum([costs[0], costs[1], costs[3]][int(e)] for e in exit_playbacks(confidence, threshold)) / 4

    assert mean(threshold) <= 0.6 * 42
    larger = sorted(v for v in confidence[:-1].flatten().tolist() + [1.0 + 1e-6] if v > threshold)
    assert not larger or mean(larger[0]) > 0.6 * 42
    assert threshold == pytest.approx(0.8)
    point = anytime_point(torch.zeros(3, 4, 2), torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), LabelSpace((2,)),
                          confidence, costs, threshold)
    assert point.mean_cost == pytest.approx(23.0) and point.exit_fractions == [0.5, 0.25, 0.25]
    assert point.cost_fraction == pytest.approx(23.0 / 42)


def test_a_playbacks_logits_do_not_depend_on_later_playbacks() -> None:
    """What makes an exit after playback p valid: changing playback 2 leaves the logits of playbacks 0 and 1
    unchanged (TemPr reads the playbacks in order), and changes playback 2's and the fused ones."""
    cfg = load_config(REPO / "configs/Demo/PlayItBackX2.yaml", ["NUM_GPUS", "0", *TINY_MODEL])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    playbacks = [torch.randn(2, 16 * (i + 1), 128) for i in range(3)]
    with torch.no_grad():
        before = model(playbacks)
        after = model([*playbacks[:2], torch.randn(2, 48, 128)])
    torch.testing.assert_close(after.playback_logits[:2], before.playback_logits[:2])
    assert not torch.allclose(after.playback_logits[2], before.playback_logits[2])
    assert not torch.allclose(after.logits, before.logits)


@pytest.mark.parametrize("saliency", ["evidence", "slots"])
def test_the_early_exit_forward_equals_the_full_forward_and_skips_the_work(saliency: str) -> None:
    """PlayItBack.forward_anytime against the full forward with the exit rule applied afterwards (anytime_logits of
    exit_playbacks), clip by clip, at thresholds where clips stop at every playback; and it runs the encoder on the
    running clips only (the batch sizes each encoder pass saw, counted by a hook on its patch embedding)."""
    cfg = load_config(REPO / "configs/Demo/PlayItBackX2.yaml",
                      ["NUM_GPUS", "0", *TINY_MODEL, "SALIENCY.METHOD", saliency])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    playbacks = [torch.randn(12, 16 * (i + 1), 128) for i in range(3)]
    with torch.no_grad():
        full = model(playbacks)
    # Any rule on a playback's logits; the first logit, so that the clips' confidences cross between playbacks.
    def rule(logits: torch.Tensor) -> torch.Tensor:
        return logits[..., 0]

    confidence = rule(full.playback_logits)  # [S, N]
    # Thresholds at the clips' confidences, so that some stop at playback 0, some at 1 (a clip surer at playback 1
    # than at 0, at its playback-1 confidence), some run to the end.
    surer_later = confidence[1][confidence[1] > confidence[0]]
    assert len(surer_later) > 0
    stopped_at: set[int] = set()
    for threshold in [*confidence[:2].flatten().sort().values[[2, 8, 16]].tolist(), *surer_later[:3].tolist(),
                      -math.inf, math.inf]:
        seen: list[int] = []
        hook = model.encoder.patch_embed.register_forward_hook(
            lambda _m, args, _out, seen=seen: seen.append(args[0].shape[0]))
        try:
            out = model.forward_anytime(playbacks, rule, threshold)
        finally:
            hook.remove()
        exits = exit_playbacks(confidence, threshold)
        assert out.exits.tolist() == exits.tolist()
        stopped_at |= set(exits.tolist())
        torch.testing.assert_close(out.logits, anytime_logits(full.playback_logits, full.logits, exits),
                                   atol=1e-5, rtol=1e-5)
        # Playback p's encoder pass reads the clips that have not stopped before it.
        expected = [int((exits >= p).sum()) for p in range(3)]
        assert seen == [n for n in expected if n > 0]
    assert stopped_at == {0, 1, 2}
    torch.testing.assert_close(out.features, full.features, atol=1e-5, rtol=1e-5)  # threshold inf: all run to the end


def test_a_test_with_an_exit_policy_and_the_anytime_tool(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data")
    out = tmp_path / "run"
    run_net("configs/Demo/PlayItBackX2.yaml", [*run_opts(data, out), "DATA.EVENTS_FILE", "", "TEST.ENABLE", "True",
                                               "TEST.EXIT_POLICY", "max_prob", "TEST.EXIT_THRESHOLD", "0.5"])
    final = metrics(out, "test_final")[-1]
    exits = [final[f"anytime_exit_p{p}"] for p in range(3)]
    assert sum(exits) == pytest.approx(100.0)
    assert 0 < final["anytime_cost_fraction"] <= 1.0 and final["anytime_gmacs"] <= final["full_gmacs"]
    assert "anytime_top1_acc" in final
    result = subprocess.run([sys.executable, str(REPO / "tools/anytime.py"), "--run", str(out), "--targets", "0.5",
                             "0.8", "--out", str(tmp_path / "anytime")], capture_output=True, text=True, cwd=REPO,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    calibrated = [line for line in lines if "target" in line]
    assert {(line["policy"], line["target"]) for line in calibrated} == {(p, t) for p in ("max_prob", "margin")
                                                                          for t in (0.5, 0.8)}
    for line in calibrated:
        # The threshold is chosen on the validation list (the tiny run's is its test list: the same cost).
        assert line["val_cost_fraction"] <= line["target"] + 1e-9 and math.isclose(
            line["cost_fraction"], line["val_cost_fraction"])
    saved = json.loads((tmp_path / "anytime" / "anytime.json").read_text())
    assert len(saved["exit_costs_gmacs"]) == 3 and (tmp_path / "anytime" / "anytime.png").stat().st_size > 0
    # A run of the encoder alone is refused in one line.
    with pytest.raises(ConfigError, match="TEST.EXIT_POLICY max_prob stops PlayItBack"):
        load_config(REPO / "configs/Demo/MViT_pretrain.yaml", ["TEST.EXIT_POLICY", "max_prob"])

"""End-to-end training, evaluation, exact resumption and distributed equivalence on a tiny generated dataset."""
from __future__ import annotations

import csv
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from engine_utils import make_tiny_dataset, metrics, run_net, run_opts, start_run_net
from playitback.models.output import ModelOutput

PLAYITBACK = "configs/Demo/PlayItBackX2.yaml"
ENCODER = "configs/Demo/MViT_pretrain.yaml"
METRIC_KEYS = ("top1_acc", "top5_acc", "mAP", "AUC", "loss")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_demo"))


@pytest.fixture(scope="module")
def uninterrupted(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-epoch PlayItBack run with SpecAugment and 2 DataLoader workers, never interrupted."""
    out = tmp_path_factory.mktemp("uninterrupted")
    run_net(PLAYITBACK, run_opts(data, out, epochs=3, workers=2))
    return out


def _final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    path = output_dir / "checkpoints" / "checkpoint_epoch_00003.pyth"
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def _assert_same_run(a: Path, b: Path) -> None:
    val_a, val_b = metrics(a, "val_epoch")[-1], metrics(b, "val_epoch")[-1]
    assert {k: val_a[k] for k in METRIC_KEYS} == {k: val_b[k] for k in METRIC_KEYS}
    weights_a, weights_b = _final_weights(a), _final_weights(b)
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key


def test_train_writes_logs_checkpoints_and_learns(uninterrupted: Path) -> None:
    checkpoints = sorted(p.name for p in (uninterrupted / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_best.pyth", "checkpoint_epoch_00001.pyth", "checkpoint_epoch_00002.pyth",
                           "checkpoint_epoch_00003.pyth"]
    state = torch.load(uninterrupted / "checkpoints" / "checkpoint_epoch_00003.pyth", weights_only=True)
    for key in ("epoch", "model_state", "optimizer_state", "cfg", "scaler_state", "rng_states", "iteration_in_epoch"):
        assert key in state
    train_epochs = metrics(uninterrupted, "train_epoch")
    assert [r["epoch"] for r in train_epochs] == [1, 2, 3]
    assert all(r["loss"] > 0 for r in train_epochs)
    assert len(metrics(uninterrupted, "val_epoch")) == 3
    log = (uninterrupted / "stdout.log").read_text()
    assert "json_stats: " in log and '"split": "train_iter"' in log


def test_fresh_process_test_equals_end_of_training_eval(uninterrupted: Path, data: Path) -> None:
    run_net(PLAYITBACK, run_opts(data, uninterrupted, epochs=3)
            + ["TRAIN.ENABLE", "False", "TEST.ENABLE", "True", "TEST.NUM_ENSEMBLE_VIEWS", "1",
               "TEST.CHECKPOINT_SELECT", "last", "TEST.SAVE_SEGMENTS", "True"])
    final_val = metrics(uninterrupted, "val_epoch")[-1]
    test = metrics(uninterrupted, "test_final")[-1]
    for key in METRIC_KEYS:
        assert test[key] == pytest.approx(final_val[key], abs=1e-6), key
    scores = uninterrupted / "scores"
    assert (scores / "test.npz").is_file()
    segments = [line for line in (scores / "segments.jsonl").read_text().splitlines() if line]
    assert len(segments) == 12 * 2  # 12 test clips x 1 view x 2 replays
    # The reproducibility kit: the clips of every split, the listed test clips present, per-class AP behind the mAP.
    from playitback.data.annotations import read_annotations

    for split, name in (("train", "train.csv"), ("val", "test.csv"), ("test", "test.csv")):
        uids = [r.uid for r in read_annotations(data / "annotations" / name, "vggsound")]
        assert (uninterrupted / "clips" / f"{split}.txt").read_text().splitlines() == uids
    assert (test["clips_listed"], test["clips_present"]) == (12, 12)
    assert "of its 12 clips have their audio (100.00%)" in (uninterrupted / "stdout.log").read_text()
    rows = list(csv.DictReader((scores / "per_class.csv").open()))
    names = (data / "annotations" / "classes.txt").read_text().splitlines()
    assert [r["class_name"] for r in rows] == names and [int(r["positives"]) for r in rows] == [3, 3, 3, 3]
    assert sum(float(r["AP"]) for r in rows) / 4 == pytest.approx(test["mAP"], abs=1e-3)


def test_kill9_mid_epoch_then_same_command_resumes_exactly(uninterrupted: Path, data: Path, tmp_path: Path) -> None:
    opts = run_opts(data, tmp_path, epochs=3, workers=2)
    process = start_run_net(PLAYITBACK, opts)
    deadline = time.time() + 300
    seen_epoch2 = False
    for line in process.stdout:
        if '"epoch": "2/3"' in line and '"train_iter"' in line:
            seen_epoch2 = True
            process.kill()  # SIGKILL in the middle of epoch 2
            break
        assert time.time() < deadline
    process.wait()
    assert seen_epoch2
    assert not (tmp_path / "checkpoints" / "checkpoint_epoch_00003.pyth").exists()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    run_net(PLAYITBACK, opts)
    _assert_same_run(uninterrupted, tmp_path)


def test_sigterm_saves_mid_epoch_and_resumes_exactly(uninterrupted: Path, data: Path, tmp_path: Path) -> None:
    opts = run_opts(data, tmp_path, epochs=3, workers=2)
    process = start_run_net(PLAYITBACK, opts)
    for line in process.stdout:
        if '"epoch": "2/3"' in line and '"iter": "1/3"' in line:
            # To every process of the run, its DataLoader workers included, as SLURM signals a preempted job step.
            os.killpg(process.pid, signal.SIGTERM)
            break
    output = process.stdout.read()
    assert process.wait() == 0, output
    state = torch.load(tmp_path / "checkpoints" / "checkpoint_epoch_00002.pyth", weights_only=True)
    assert 1 <= state["iteration_in_epoch"] < 3
    run_net(PLAYITBACK, opts)
    _assert_same_run(uninterrupted, tmp_path)


def test_a_run_on_shards_equals_the_same_run_on_files(uninterrupted: Path, data: Path, tmp_path: Path) -> None:
    """The uninterrupted run again, reading a pcm16 pack of the same clips (2 workers, each opening the shards
    itself): identical weights and validation metrics."""
    from playitback.data.annotations import read_annotations
    from playitback.data.audio_io import FileAudioReader
    from playitback.data.shards import pack_clips

    sources = [r.source for name in ("train.csv", "test.csv")
               for r in read_annotations(data / "annotations" / name, "vggsound")]
    pack_clips(FileAudioReader(data / "audio", ".wav", 16000), sources, tmp_path / "pack", clips_per_shard=10,
               progress=False)
    run_net(PLAYITBACK, run_opts(data, tmp_path / "run", epochs=3, workers=2)
            + ["VGGSOUND.AUDIO_DATA_DIR", str(tmp_path / "pack")])
    assert f"packed in {tmp_path / 'pack'}" in (tmp_path / "run" / "stdout.log").read_text()
    _assert_same_run(uninterrupted, tmp_path / "run")


def test_two_gloo_processes_equal_one(data: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes on the same global batch gives the same model and metrics as 1 process."""
    deterministic = ["SPEC_AUGMENT.ENABLE", "False", "ENCODER.DROPPATH_RATE", "0.0", "MODEL.DROPOUT_RATE", "0.0",
                     "SOLVER.OPTIMIZING_METHOD", "sgd", "SOLVER.BASE_LR", "0.05"]
    single, double = tmp_path / "one", tmp_path / "two"
    run_net(ENCODER, run_opts(data, single, epochs=2) + deterministic)
    run_net(ENCODER, run_opts(data, double, epochs=2) + deterministic,
            launcher=[str(Path(__import__("sys").executable).parent / "torchrun"), "--nproc_per_node", "2",
                      "--master_port", "29517"])
    one = torch.load(single / "checkpoints" / "checkpoint_epoch_00002.pyth", weights_only=True)["model_state"]
    two = torch.load(double / "checkpoints" / "checkpoint_epoch_00002.pyth", weights_only=True)["model_state"]
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4, msg=key)
    val_one, val_two = metrics(single, "val_epoch")[-1], metrics(double, "val_epoch")[-1]
    for key in METRIC_KEYS:
        assert val_one[key] == pytest.approx(val_two[key], abs=1e-3), key


def test_playitback_under_ddp_needs_no_unused_parameter_search(data: Path, tmp_path: Path) -> None:
    """Two gloo processes train PlayItBack with DistributedDataParallel(find_unused_parameters=False): DDP would fail
    at the second step if any trainable parameter (saliency, decoder) missed its gradient."""
    run_net(PLAYITBACK, run_opts(data, tmp_path, epochs=1) + ["SOLVER.WARMUP_EPOCHS", "0.0"],
            launcher=[str(Path(__import__("sys").executable).parent / "torchrun"), "--nproc_per_node", "2",
                      "--master_port", "29519"])
    assert metrics(tmp_path, "train_epoch")[0]["loss"] > 0


def test_bf16_autocast_and_tensorboard(data: Path, tmp_path: Path) -> None:
    run_net(PLAYITBACK, run_opts(data, tmp_path, epochs=1) + [
        "SOLVER.WARMUP_EPOCHS", "0.0", "TRAIN.MIXED_PRECISION", "True", "TRAIN.AMP_DTYPE", "bfloat16",
        "TENSORBOARD.ENABLE", "True"])
    assert metrics(tmp_path, "train_epoch")[0]["loss"] > 0
    assert list((tmp_path / "runs-vggsound").glob("events.out.tfevents.*"))


class _AutocastProbe(torch.nn.Module):
    """Records whether the forward ran under CPU autocast, and in which dtype."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, classes)
        self.seen: list[torch.dtype | None] = []

    def forward(self, playbacks: list[torch.Tensor]) -> ModelOutput:
        enabled = torch.is_autocast_enabled("cpu")
        self.seen.append(torch.get_autocast_dtype("cpu") if enabled else None)
        features = playbacks[0].mean((1, 2))[:, None]
        return ModelOutput(logits=self.linear(features), features=features)


@pytest.mark.parametrize("train_amp, test_amp", [(True, True), (True, False), (False, True)])
def test_training_and_evaluation_autocast_follow_their_own_switch(train_amp: bool, test_amp: bool) -> None:
    from playitback.config import load_config
    from playitback.engine.build import build_task

    cfg = load_config(PLAYITBACK, ["NUM_GPUS", "0", "TRAIN.MIXED_PRECISION", str(train_amp), "TEST.MIXED_PRECISION",
                                   str(test_amp), "TRAIN.AMP_DTYPE", "bfloat16", "MIXUP.ENABLE", "False",
                                   "SPEC_AUGMENT.ENABLE", "False", "DATA.FRONTEND", "workers"])
    probe = _AutocastProbe(cfg.MODEL.NUM_CLASSES)
    task = build_task(cfg, probe, torch.device("cpu"), train=True)
    batch = {"playbacks": [torch.randn(2, 64 * (i + 1), 128) for i in range(3)], "label": torch.tensor([0, 1])}
    task.step(batch, train=True)
    task.step(batch, train=False)
    assert probe.seen == [torch.bfloat16 if train_amp else None, torch.bfloat16 if test_amp else None]


def test_bf16_test_stays_close_to_the_fp32_test(uninterrupted: Path, data: Path, tmp_path: Path) -> None:
    opts = run_opts(data, uninterrupted, epochs=3) + ["TRAIN.ENABLE", "False", "TEST.ENABLE", "True",
                                                      "TEST.NUM_ENSEMBLE_VIEWS", "1", "TEST.CHECKPOINT_SELECT", "last"]
    run_net(PLAYITBACK, opts + ["OUTPUT_DIR", str(tmp_path), "TEST.CHECKPOINT_FILE_PATH",
                                str(uninterrupted / "checkpoints" / "checkpoint_epoch_00003.pyth"),
                                "TEST.MIXED_PRECISION", "True", "TRAIN.AMP_DTYPE", "bfloat16"])
    fp32 = metrics(uninterrupted, "val_epoch")[-1]
    bf16 = metrics(tmp_path, "test_final")[-1]
    assert bf16["loss"] == pytest.approx(fp32["loss"], abs=0.05)
    assert bf16["mAP"] == pytest.approx(fp32["mAP"], abs=5.0)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_model_compile_trains_like_eager_and_tests_from_its_checkpoint(uninterrupted: Path, data: Path,
                                                                        tmp_path: Path, backend: str) -> None:
    """MODEL.COMPILE wraps the model in torch.compile for training and evaluation: the same run as `uninterrupted`
    ends with the same weights and metrics up to float reassociation, and its checkpoints hold the plain module's
    keys, so a test in a fresh process (compiled too) equals the end-of-training evaluation."""
    compile_opts = ["MODEL.COMPILE", "True", "MODEL.COMPILE_BACKEND", backend]
    opts = run_opts(data, tmp_path, epochs=3, workers=2) + compile_opts
    # inductor draws the random numbers of compiled graphs (slot noise, drop path, dropout) from its own generator;
    # falling back to torch's makes the draws those of the eager run, so that the two runs can be compared.
    launcher = [sys.executable, "-c", "import runpy, sys, torch._inductor.config as inductor; "
                "inductor.fallback_random = True; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], "
                "run_name='__main__')"] if backend == "inductor" else None
    run_net(PLAYITBACK, opts, launcher=launcher)
    eager, compiled = _final_weights(uninterrupted), _final_weights(tmp_path)
    assert eager.keys() == compiled.keys()
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], atol=1e-3, rtol=1e-2, msg=key)
    val_eager, val_compiled = metrics(uninterrupted, "val_epoch")[-1], metrics(tmp_path, "val_epoch")[-1]
    for key in METRIC_KEYS:
        assert val_compiled[key] == pytest.approx(val_eager[key], abs=1e-3), key
    run_net(PLAYITBACK, opts + ["TRAIN.ENABLE", "False", "TEST.ENABLE", "True", "TEST.NUM_ENSEMBLE_VIEWS", "1",
                                "TEST.CHECKPOINT_SELECT", "last"])
    test = metrics(tmp_path, "test_final")[-1]
    for key in METRIC_KEYS:
        assert test[key] == pytest.approx(val_compiled[key], abs=1e-5), key


def test_frozen_encoder_runs_in_eval_mode_without_gradients() -> None:
    from engine_utils import REPO, TINY_MODEL
    from playitback.config import load_config
    from playitback.models import build_model

    model = build_model(load_config(REPO / PLAYITBACK, ["NUM_GPUS", "0", *TINY_MODEL, "MODEL.FREEZE_ENCODER", "True"])
                        ).train()
    assert not model.encoder.training and all(not m.training for m in model.encoder.modules())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert model.decoder.training and all(m.training for m in model.saliencies.modules())


def test_plot_segments_draws_test_clips_with_their_events(uninterrupted: Path, data: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from engine_utils import REPO

    opts = run_opts(data, uninterrupted, epochs=3)
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/plot_segments.py"), "--cfg", str(REPO / PLAYITBACK), "--checkpoint",
         str(uninterrupted / "checkpoints" / "checkpoint_epoch_00003.pyth"), "--events",
         str(data / "annotations" / "events.csv"), "--out", str(tmp_path), "--num-clips", "2", *opts],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    pictures = sorted(tmp_path.glob("replay_*.png"))
    assert len(pictures) == 2 and all(p.stat().st_size > 10_000 for p in pictures)
    assert result.stdout.split() == [str(p) for p in pictures]

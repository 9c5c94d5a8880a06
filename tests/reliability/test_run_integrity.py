"""Where a run's weights and state come from, and which checkpoint it tests (issue 12, items 4-7, 9, 11).

A frozen encoder that no checkpoint initialised is refused; the best checkpoint is not chosen on the test list; a
foreign checkpoint (the original PlayItBack's) gives weights only; a resume across AMP settings skips what does not
apply; the epoch's checkpoint is written before validation, which a resumed run then completes.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_utils import REPO, metrics, run_opts
from playitback.config import derived, load_config
from playitback.data.build import build_label_space
from playitback.data.records import ClipRecord
from playitback.engine import checkpoint_files as ckpt
from playitback.engine import trainer
from playitback.engine.build import build_checkpointer, build_task, build_training_optimizer
from playitback.engine.evaluate import Evaluation, write_scores
from playitback.models import build_model

PLAYITBACK = REPO / "configs/Demo/PlayItBackX2.yaml"
ENCODER = REPO / "configs/Demo/MViT_pretrain.yaml"
STRICT = ["MODEL.ALLOW_RANDOM_WEIGHTS", "False"]
TEST_ONLY = ["TRAIN.ENABLE", "False", "TEST.ENABLE", "True", "TEST.NUM_ENSEMBLE_VIEWS", "1"]


@pytest.fixture(scope="module")
def data(tiny_data: Path) -> Path:
    return tiny_data


@pytest.fixture(scope="module")
def stage1(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of encoder pretraining: its checkpoint is what stage 2 loads."""
    out = tmp_path_factory.mktemp("stage1")
    trainer.train(load_config(ENCODER, run_opts(data, out, epochs=1)))
    return out / "checkpoints" / "checkpoint_epoch_00001.pyth"


def test_frozen_encoder_without_weights_is_refused(data: Path, stage1: Path, tmp_path: Path) -> None:
    frozen = ["MODEL.FREEZE_ENCODER", "True"]  # the dataset recipes' stage 2 (the demo's fine-tunes its encoder)
    opts = run_opts(data, tmp_path / "random", epochs=1) + STRICT + frozen
    with pytest.raises(trainer.RandomWeightsError, match=r"MODEL.FREEZE_ENCODER is True but \d+ of \d+ encoder "
                                                         r"weights come from no checkpoint.*CHECKPOINT_FILE_PATH"):
        trainer.train(load_config(PLAYITBACK, opts))
    assert not ckpt.list_epoch_checkpoints(tmp_path / "random")
    # From the stage-1 checkpoint it trains.
    trainer.train(load_config(PLAYITBACK, run_opts(data, tmp_path / "stage2", epochs=1) + STRICT + frozen
                              + ["TRAIN.CHECKPOINT_FILE_PATH", str(stage1)]))
    assert metrics(tmp_path / "stage2", "train_epoch")


def test_testing_a_checkpoint_that_leaves_weights_missing_is_refused(data: Path, stage1: Path,
                                                                      tmp_path: Path) -> None:
    opts = run_opts(data, tmp_path, epochs=1) + STRICT + TEST_ONLY
    # The stage-1 checkpoint has no saliency or decoder: testing PlayItBack with it would score random layers.
    with pytest.raises(ckpt.CheckpointError, match=r"weights are missing .*saliencies|weights are missing .*"
                                                   r"decoder"):
        trainer.test(load_config(PLAYITBACK, opts + ["TEST.CHECKPOINT_FILE_PATH", str(stage1)]))
    with pytest.raises(trainer.RandomWeightsError, match="no checkpoint to test"):
        trainer.test(load_config(PLAYITBACK, opts))


def _fake_checkpoints(output_dir: Path) -> dict[str, Path]:
    paths = {"1": ckpt.checkpoint_path(output_dir, 1), "2": ckpt.checkpoint_path(output_dir, 2),
             "best": ckpt.best_checkpoint_path(output_dir)}
    for name, path in paths.items():
        ckpt.save_checkpoint(path, {"epoch": name})
    return paths


def test_best_checkpoint_is_not_chosen_on_the_test_list(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = _fake_checkpoints(tmp_path)
    same = load_config(PLAYITBACK, ["NUM_GPUS", "0", "OUTPUT_DIR", str(tmp_path)])  # VAL_LIST == TEST_LIST
    with caplog.at_level(logging.INFO, logger="playitback.engine.checkpointer"):
        assert trainer.checkpoint_to_test(same) == paths["2"]
    assert "validation and test lists are the same file" in caplog.text and "testing the last checkpoint" in caplog.text
    held_out = load_config(PLAYITBACK, ["NUM_GPUS", "0", "OUTPUT_DIR", str(tmp_path), "VGGSOUND.VAL_LIST", "val.csv"])
    assert trainer.checkpoint_to_test(held_out) == paths["best"]
    caplog.clear()
    explicit = load_config(PLAYITBACK, ["NUM_GPUS", "0", "OUTPUT_DIR", str(tmp_path), "TEST.CHECKPOINT_SELECT", "best"])
    with caplog.at_level(logging.WARNING, logger="playitback.engine.checkpointer"):
        assert trainer.checkpoint_to_test(explicit) == paths["best"]
    assert "chosen on the test list" in caplog.text


def test_original_playitback_checkpoint_gives_weights_only(data: Path, tmp_path: Path) -> None:
    """The original's checkpoints hold an optimiser over every parameter and epoch 49 of 50: loading that optimiser
    crashed, and its epoch would have resumed past the end. Only this project's training checkpoints restore state."""
    cfg = load_config(PLAYITBACK, run_opts(data, tmp_path / "run", epochs=1))
    model = build_model(cfg)
    every_parameter = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    original = tmp_path / "original.pyth"
    torch.save({"epoch": 49, "model_state": model.state_dict(), "optimizer_state": every_parameter.state_dict(),
                "cfg": cfg.dump()}, original)
    trainer.train(load_config(PLAYITBACK, run_opts(data, tmp_path / "run", epochs=1) + STRICT
                              + ["TRAIN.CHECKPOINT_FILE_PATH", str(original)]))
    assert [r["epoch"] for r in metrics(tmp_path / "run", "train_epoch")] == [1]
    log = (tmp_path / "run" / "stdout.log").read_text()
    assert "not a playitback training checkpoint: loaded its weights only" in log


def test_own_training_checkpoint_as_start_point_continues_its_schedule(data: Path, stage1: Path,
                                                                       tmp_path: Path) -> None:
    trainer.train(load_config(ENCODER, run_opts(data, tmp_path, epochs=2)
                              + ["TRAIN.CHECKPOINT_FILE_PATH", str(stage1)]))
    assert [r["epoch"] for r in metrics(tmp_path, "train_epoch")] == [2]


def test_resume_across_amp_settings_skips_the_scaler_state(data: Path, stage1: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint saved with the GradScaler disabled holds {}; a run that scales (fp16) starts a fresh scale."""
    assert torch.load(stage1, weights_only=True)["scaler_state"] == {}
    cfg = load_config(ENCODER, run_opts(data, tmp_path, epochs=2) + ["TRAIN.CHECKPOINT_FILE_PATH", str(stage1)])
    model = build_model(cfg)
    optimizer = build_training_optimizer(cfg, model)
    task = build_task(cfg, model, torch.device("cpu"), train=True)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    with caplog.at_level(logging.INFO, logger="playitback.engine.checkpointer"):
        state, _ = build_checkpointer(cfg).resume(model, optimizer, scaler, task.generator)
    assert state.epoch == 1 and scaler.get_scale() == 65536.0
    assert "holds no GradScaler state (saved without fp16 scaling)" in caplog.text


def test_failing_validation_keeps_the_epoch_and_the_resumed_run_validates_it(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(ENCODER, run_opts(data, tmp_path, epochs=2))
    evaluate = trainer.evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("validation died")

    monkeypatch.setattr(trainer, "evaluate", broken)
    with pytest.raises(RuntimeError, match="validation died"):
        trainer.train(cfg)
    saved = torch.load(ckpt.checkpoint_path(tmp_path, 1), weights_only=True)
    assert saved["pending_validation"] is True
    monkeypatch.setattr(trainer, "evaluate", evaluate)
    trainer.train(cfg)
    assert [r["epoch"] for r in metrics(tmp_path, "train_epoch")] == [1, 2]  # epoch 1 was not trained again
    val = metrics(tmp_path, "val_epoch")
    assert [r["epoch"] for r in val] == [1, 2]
    best_epoch = max(val, key=lambda r: (r["top1_acc"], -r["epoch"]))["epoch"]
    best = torch.load(ckpt.best_checkpoint_path(tmp_path), weights_only=True)["model_state"]
    chosen = torch.load(ckpt.checkpoint_path(tmp_path, best_epoch), weights_only=True)["model_state"]
    assert all(torch.equal(best[k], chosen[k]) for k in best)


def test_epic_scores_file_is_named_whatever_the_case_of_the_dataset(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs/EPIC-KITCHENS/PlayItBackX1.yaml",
                      ["NUM_GPUS", "0", "TEST.DATASET", "EpicKitchens", "OUTPUT_DIR", str(tmp_path)])
    records = [ClipRecord("P01_01_0", "P01_01", (0, 1)), ClipRecord("P01_01_1", "P01_01", (2, 3))]
    evaluation = Evaluation({}, torch.zeros(2, 397), torch.zeros(2, 1, 397), torch.tensor([[0, 1], [2, 3]]),
                            [r.uid for r in records])
    write_scores(tmp_path / "scores", evaluation, build_label_space(cfg, records), derived.dataset_files(cfg, "test").scores_name)
    names = {p.name for p in (tmp_path / "scores").iterdir()}
    assert "validation.npz" in names and "test.npz" not in names
    assert list(np.load(tmp_path / "scores" / "validation.npz")["uids"]) == ["P01_01_0", "P01_01_1"]

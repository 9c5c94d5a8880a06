"""tools/export.py: torch.export, ONNX and TorchScript exports of a tiny random-weight PlayItBack match the PyTorch
model, with a dynamic batch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from playitback.config import dump_config, load_config
from playitback.inference import load_inference_model

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[export])")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -e .[export])")

REPO = Path(__file__).resolve().parents[1]

import export  # noqa: E402
from engine_utils import TINY_MODEL  # noqa: E402

CFG = str(REPO / "configs" / "Demo" / "PlayItBackX2.yaml")
# The shared tiny model, on 1 s crops of 32 frames and 32 mel bands to keep the export and inference fast.
TINY = [*TINY_MODEL, "AUDIO_DATA.CLIP_SECS", "1.0", "AUDIO_DATA.FRAMES0", "32", "AUDIO_DATA.NUM_FREQUENCIES", "32",
        "MODEL.NUM_CLASSES", "5"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("export")
    cfg = load_config(CFG, TINY)
    torch.manual_seed(0)
    model = load_inference_model(cfg, None, torch.device("cpu"))
    checkpoint = root / "tiny.pyth"
    torch.save({"model_state": model.state_dict(), "cfg": dump_config(cfg)}, checkpoint)
    code = export.main(["--cfg", CFG, "--checkpoint", str(checkpoint), "--out", str(root / "out"), *TINY])
    assert code == 0
    return {"root": root, "cfg": cfg, "model": model, "checkpoint": checkpoint, "out": root / "out"}


def _reference(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits = model(list(inputs)).logits
    return logits.numpy(), logits.softmax(-1).numpy()


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_pytorch_with_a_dynamic_batch(exported: dict, batch: int) -> None:
    inputs = export.example_inputs(exported["cfg"], batch, seed=7)
    logits, probs = _reference(exported["model"], inputs)
    session = onnxruntime.InferenceSession(str(exported["out"] / "model.onnx"), providers=["CPUExecutionProvider"])
    got_logits, got_probs = session.run(None, {f"playback{i}": x.numpy() for i, x in enumerate(inputs)})
    np.testing.assert_allclose(got_logits, logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_probs, probs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_probs.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 5])
def test_exported_program_matches_pytorch_with_a_dynamic_batch(exported: dict, batch: int) -> None:
    program = torch.export.load(str(exported["out"] / "model.pt2")).module()
    inputs = export.example_inputs(exported["cfg"], batch, seed=11)
    logits, probs = _reference(exported["model"], inputs)
    with torch.no_grad():
        got_logits, got_probs = program(*inputs)
    np.testing.assert_allclose(got_logits.numpy(), logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_probs.numpy(), probs, atol=1e-5, rtol=0)


def test_torchscript_matches_pytorch(exported: dict) -> None:
    scripted = torch.jit.load(str(exported["out"] / "model.pt"))
    for batch in (3,):
        inputs = export.example_inputs(exported["cfg"], batch, seed=batch)
        logits, probs = _reference(exported["model"], inputs)
        with torch.no_grad():
            got_logits, got_probs = scripted(*inputs)
        np.testing.assert_allclose(got_logits.numpy(), logits, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got_probs.numpy(), probs, atol=1e-5, rtol=0)


def test_description_file(exported: dict) -> None:
    description = json.loads((exported["out"] / "export.json").read_text())
    assert [i["shape"] for i in description["inputs"]] == [["batch", 32, 32], ["batch", 64, 32], ["batch", 96, 32]]
    assert description["class_counts"] == [5] and description["files"] == {
        "pt2": "model.pt2", "onnx": "model.onnx", "torchscript": "model.pt"}


def test_checkpoint_that_does_not_fit(exported: dict, capsys: pytest.CaptureFixture) -> None:
    code = export.main(["--cfg", CFG, "--checkpoint", str(exported["checkpoint"]), "--out",
                        str(exported["root"] / "bad"), "--format", "torchscript", *TINY[:-1], "7"])
    assert code == 2 and "does not fit the model of this config" in capsys.readouterr().err

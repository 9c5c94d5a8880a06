"""No step reads a device value on the host: the training and eval steps of every shipped config run on the meta device.

A meta tensor has a shape and no data, so everything that would synchronise the host with a GPU (``.item()``,
``bool(tensor)``, ``.tolist()``, ``.nonzero()``, a data-dependent shape) raises on it. Running the library's whole step
there (on-device front-end from host waveforms, SpecAugment, MixUp, forward, loss, backward) is a CPU check of what
``torch.cuda.set_sync_debug_mode("error")`` checks on a GPU (python -m bench.model --sync-debug). Autocast has no meta
backend, so these steps run in float32.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from playitback.config import derived, load_config
from playitback.engine.build import build_task
from playitback.models import build_model
from test_configs import SHIPPED, TINY, tiny_opts

REPO = Path(__file__).resolve().parents[1]
META = torch.device("meta")
HOST_STEP = ["DATA.FRONTEND", "device", "TRAIN.MIXED_PRECISION", "False", "SPEC_AUGMENT.ENABLE", "True",
             "SPEC_AUGMENT.TIME_WARP", "2", "SPEC_AUGMENT.FREQ_MASK", "8", "SPEC_AUGMENT.TIME_MASK", "3"]


def host_batch(cfg, batch: int = 2) -> dict[str, Tensor]:
    """A batch as the loader delivers it with the front-end on the device: host waveforms and labels."""
    counts = derived.class_counts(cfg)
    if cfg.MODEL.MULTITASK:
        labels = torch.stack([torch.randint(0, c, (batch,)) for c in counts], dim=1)
    elif cfg.DATA.MULTI_LABEL:
        labels = (torch.rand(batch, counts[0]) < 0.05).float()
    else:
        labels = torch.randint(0, counts[0], (batch,))
    clip = derived.clip_samples(cfg)
    # One short segment: its padded frames are filled on the device too (AUDIO_DATA.PAD_MODE edge).
    valid = torch.tensor([clip // 2] + [clip] * (batch - 1))
    return {"waveform": torch.randn(batch, clip), "valid_samples": valid, "label": labels}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_training_and_eval_steps_never_read_device_values(path: Path) -> None:
    cfg = load_config(path, [*tiny_opts(path), "AUDIO_DATA.CLIP_SECS", "2.0", *HOST_STEP])
    model = build_model(cfg).to(META)
    task = build_task(cfg, model, META, train=True)
    assert task.pyramid is not None and task.spec_augment_settings is not None
    batch = host_batch(cfg)
    model.train()
    outputs, losses, targets = task.step(batch, train=True)
    losses["loss"].backward()
    assert targets.device == META and outputs.logits.shape == (2, sum(derived.class_counts(cfg)))
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        outputs, losses, _ = build_task(cfg, model, META, train=False).step(batch, train=False)
    assert losses["loss"].device == META


class _ReadsALoss(nn.Module):
    """A model that branches on a device value, as a host synchronisation would."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(128, 4)

    def forward(self, playbacks: list[Tensor]) -> dict[str, Tensor]:
        logits = self.linear(playbacks[0].mean(1))
        if logits.abs().max() > 1e3:
            logits = logits / 1e3
        return {"logits": logits}


def test_the_meta_check_catches_a_host_read() -> None:
    cfg = load_config(REPO / "configs/VGG-Sound/MViTv2_B.yaml",
                      [*TINY, "AUDIO_DATA.CLIP_SECS", "2.0", *HOST_STEP, "MIXUP.ENABLE", "False",
                       "MODEL.NUM_CLASSES", "4"])
    task = build_task(cfg, _ReadsALoss().to(META), META, train=True)
    with pytest.raises(RuntimeError, match="meta"):
        task.step(host_batch(cfg), train=True)

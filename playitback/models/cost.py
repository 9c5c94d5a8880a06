"""What one forward of a model costs, by stage (fvcore multiply-adds): the quantities the anytime exits and
tools/model_info.py report."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from playitback.models.playitback import PlayItBack
from playitback.utils.flops import FlopReport, count_flops


class _EncoderFeatures(nn.Module):
    """One encoder pass as PlayItBack runs it: spectrogram [B, T, F] -> tokens [B, T'' * F'', D] (no head)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, spectrogram: Tensor) -> Tensor:
        """[B, T, F] -> [B, T'' * F'', D]."""
        return self.encoder.forward_features(spectrogram.unsqueeze(1))[0]


def stage_flops(model: nn.Module, playbacks: Sequence[Tensor]) -> tuple[dict[str, int], FlopReport]:
    """Multiply-adds of the model (eval mode, no grad) on ``playbacks`` (S tensors [B, T0 * (i + 1), F]), by stage.

    Returns:
        ``({"total", "encoder_pass" (one pass), "encoder_passes" (all S), "encoder_head", "saliency_{i}" (PlayItBack),
        "decoder" (PlayItBack), "other"}, the whole forward's report)``, for the whole batch.
    """
    whole = count_flops(model, (list(playbacks),))
    encoder_pass = count_flops(_EncoderFeatures(model.encoder), (playbacks[0],))
    # Every pass reads a [B, T0, F] composite, so all S passes cost the same.
    num_passes = model.num_playbacks if isinstance(model, PlayItBack) else 1
    stages = {"encoder_passes": num_passes * encoder_pass.total, "encoder_head": whole.by_module.get("encoder.head", 0)}
    if isinstance(model, PlayItBack):
        stages.update({f"saliency_{i}": whole.by_module.get(f"saliencies.{i}", 0) for i in range(num_passes)})
        stages["decoder"] = whole.by_module.get("decoder", 0)
    stages["other"] = whole.total - sum(stages.values())
    return {"total": whole.total, "encoder_pass": encoder_pass.total, **stages}, whole

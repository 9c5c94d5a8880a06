"""Host-to-device copies that do not make the host wait."""
from __future__ import annotations

import torch
from torch import Tensor


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Copy `tensor` to `device` asynchronously.

    A copy from pageable host memory to a GPU may wait for the device's stream (the driver stages it through pinned
    memory), so host tensors bound for a CUDA device are pinned first; pinned blocks come from PyTorch's caching host
    allocator, which reuses them only once the copy has finished.
    """
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)

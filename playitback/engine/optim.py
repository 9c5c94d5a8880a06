"""Optimiser construction, the per-iteration learning-rate schedule and gradient clipping.

Everything takes plain arguments; the mapping from config keys lives in playitback.engine.build.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from playitback.config.choices import LR_POLICIES, OPTIMIZERS
from playitback.models.encoder import Encoder


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names listed by ``no_weight_decay()`` of the model or of any submodule.

    A submodule (e.g. the MViT encoder's position embeddings) names its parameters relative to itself, so the names
    are prefixed with the submodule's path.
    """
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):
            names.update(f"{prefix}.{name}" if prefix else name for name in module.no_weight_decay())
    return names


def param_groups(
    model: nn.Module, weight_decay: float, zero_wd_1d: bool = True, skip_names: Collection[str] = (),
    lr_scales: Mapping[str, float] | None = None,
) -> list[dict]:
    """Splits the trainable parameters into a weight-decay group and a no-weight-decay group (per LR scale).

    No weight decay goes to parameters named in ``skip_names`` or in a ``no_weight_decay()`` method of the model or
    of a submodule, and, when ``zero_wd_1d``, to 1-D parameters (norm scales and shifts) and biases. Every other
    parameter, including the 3-D slot means and the decoder latents, gets ``weight_decay``. Parameters with
    ``requires_grad=False`` are left out, and empty groups are dropped. With ``lr_scales`` (e.g. from
    :func:`layer_decay_scales`) the two groups are split further by scale, each group carrying its ``lr_scale``.

    Args:
        model: The model.
        weight_decay: Weight decay of the decayed group.
        zero_wd_1d: Whether 1-D parameters and biases skip weight decay.
        skip_names: Full parameter names (as in ``named_parameters``) that skip weight decay.
        lr_scales: Full parameter name -> LR multiplier (1 for names it lacks), or None.

    Returns:
        Parameter groups ``{"params": [...], "weight_decay": float[, "lr_scale": float]}`` for ``build_optimizer``,
        highest scale first, the decayed group before the undecayed one.
    """
    skip = set(skip_names) | _no_weight_decay_names(model)
    buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_1d_or_bias = param.ndim <= 1 or name.endswith(".bias") or name == "bias"
        no_decay = name in skip or (zero_wd_1d and is_1d_or_bias)
        scale = lr_scales.get(name, 1.0) if lr_scales is not None else 1.0
        buckets.setdefault((scale, no_decay), []).append(param)
    if not buckets:
        raise ValueError("the model has no parameter with requires_grad=True, so there is nothing to optimise")
    groups = []
    for scale, no_decay in sorted(buckets, key=lambda key: (-key[0], key[1])):
        group = {"params": buckets[scale, no_decay], "weight_decay": 0.0 if no_decay else weight_decay}
        if lr_scales is not None:
            group["lr_scale"] = scale
        groups.append(group)
    return groups


def layer_decay_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """LR multipliers of layer-wise decay for every encoder inside ``model`` (MAE, MViTv2 and AST fine-tuning).

    With an encoder of D layers (``Encoder.num_layers``), layer 0 is its embeddings, layer i + 1 block i and layer
    D + 1 the final norm and head, as its ``layer_id`` says; layer l gets ``decay ** (D + 1 - l)``, so the head keeps the full LR and each block below
    it a factor ``decay`` less. Parameters outside an encoder (saliency, decoder) are not listed: they keep 1.

    Args:
        model: The model (PlayItBack or the encoder classifier).
        decay: The per-layer factor, in (0, 1].

    Returns:
        Full parameter name -> multiplier.
    """
    scales: dict[str, float] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, Encoder):
            depth = module.num_layers
            for name, _ in module.named_parameters():
                scales[f"{prefix}.{name}" if prefix else name] = decay ** (depth + 1 - module.layer_id(name))
    return scales


def build_optimizer(
    groups: list[dict],
    method: str,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    dampening: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """Builds the optimiser; weight decay comes from each group.

    Args:
        groups: Parameter groups from :func:`param_groups`.
        method: "sgd" (momentum, Nesterov by default), "adam" or "adamw".
        lr: Initial learning rate (the schedule overwrites it every iteration).
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum (needs momentum > 0 and dampening 0).
        dampening: SGD dampening.
        betas: Adam/AdamW betas.
        eps: Adam/AdamW epsilon.

    Returns:
        The optimiser.
    """
    method = method.lower()
    if method == "sgd":
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"Nesterov SGD needs momentum > 0 and dampening 0, got momentum {momentum} and dampening "
                f"{dampening}; set nesterov False or fix those values"
            )
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening)
    if method == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps)
    if method == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"unknown optimiser method {method!r}; choose one of {', '.join(OPTIMIZERS)}")


def _lr_without_warmup(
    epoch: float, policy: str, base_lr: float, max_epoch: float, warmup_epochs: float, cosine_end_lr: float,
    cosine_after_warmup: bool, steps: Sequence[float], lrs: Sequence[float],
) -> float:
    if policy == "cosine":
        offset = warmup_epochs if cosine_after_warmup else 0.0
        # A run that ends inside its warmup never reaches the cosine: it stays at its start, the peak.
        progress = max(min(epoch, max_epoch) - offset, 0.0) / (max_epoch - offset) if max_epoch > offset else 0.0
        return cosine_end_lr + (base_lr - cosine_end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    index = sum(1 for step in steps if step <= epoch) - 1
    return lrs[index] * base_lr


def lr_at(
    epoch: float,
    *,
    policy: str,
    base_lr: float,
    max_epoch: float,
    warmup_epochs: float = 0.0,
    warmup_start_lr: float = 1e-8,
    cosine_end_lr: float = 0.0,
    cosine_after_warmup: bool = True,
    steps: Sequence[float] = (),
    lrs: Sequence[float] = (),
) -> float:
    """Learning rate at a fractional epoch (``epoch + iteration / iterations_per_epoch``).

    * "cosine": ``end + (base - end) * 0.5 * (1 + cos(pi * (e - off) / (max_epoch - off)))`` with ``off`` =
      ``warmup_epochs`` when ``cosine_after_warmup``, else 0. Past ``max_epoch`` it stays at ``cosine_end_lr``.
    * "steps_with_relative_lrs": ``lrs[i] * base_lr`` for ``steps[i] <= e < steps[i + 1]``; ``steps`` starts at 0.

    For ``e < warmup_epochs`` the rate rises linearly from ``warmup_start_lr`` to the policy's value at
    ``warmup_epochs``. A warmup as long as the run or longer is allowed (PySlowFast's rule, e.g. a 1-epoch smoke run
    of a 2.5-epoch warmup): the run follows the same warmup line as the full run and ends on it.

    Args:
        epoch: Fractional epoch, >= 0.
        policy: "cosine" or "steps_with_relative_lrs".
        base_lr: Peak learning rate.
        max_epoch: Number of training epochs.
        warmup_epochs: Length of the linear warmup in epochs.
        warmup_start_lr: Learning rate at epoch 0 when warming up.
        cosine_end_lr: Final learning rate of the cosine policy.
        cosine_after_warmup: Whether the cosine starts after the warmup instead of at epoch 0.
        steps: Epochs where each step starts (first 0), for "steps_with_relative_lrs".
        lrs: Multiplier of ``base_lr`` for each step.

    Returns:
        The learning rate.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if policy == "cosine":
        if cosine_end_lr > base_lr:
            raise ValueError(f"cosine_end_lr ({cosine_end_lr}) must not exceed base_lr ({base_lr})")
    elif policy == "steps_with_relative_lrs":
        if not steps or len(steps) != len(lrs) or steps[0] != 0 or list(steps) != sorted(steps):
            raise ValueError(
                f"steps must be ascending, start at 0 and have one entry per lrs value, got steps {list(steps)} "
                f"and lrs {list(lrs)}"
            )
    else:
        raise ValueError(f"unknown lr policy {policy!r}; choose one of {', '.join(LR_POLICIES)}")
    schedule = dict(policy=policy, base_lr=base_lr, max_epoch=max_epoch, warmup_epochs=warmup_epochs,
                    cosine_end_lr=cosine_end_lr, cosine_after_warmup=cosine_after_warmup, steps=steps, lrs=lrs)
    if epoch < warmup_epochs:
        warmup_end_lr = _lr_without_warmup(warmup_epochs, **schedule)
        return warmup_start_lr + (warmup_end_lr - warmup_start_lr) * epoch / warmup_epochs
    return _lr_without_warmup(epoch, **schedule)


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of every step of a run, as :func:`lr_at` computes it (validated once, when built).

    Call it with the fractional epoch ``epoch + iteration / iterations_per_epoch``.
    """

    policy: str
    base_lr: float
    max_epoch: float
    warmup_epochs: float = 0.0
    warmup_start_lr: float = 1e-8
    cosine_end_lr: float = 0.0
    cosine_after_warmup: bool = True
    steps: tuple[float, ...] = ()
    lrs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self(0.0)  # an impossible schedule fails when built, not at the first step

    def __call__(self, epoch: float) -> float:
        return lr_at(epoch, policy=self.policy, base_lr=self.base_lr, max_epoch=self.max_epoch,
                     warmup_epochs=self.warmup_epochs, warmup_start_lr=self.warmup_start_lr,
                     cosine_end_lr=self.cosine_end_lr, cosine_after_warmup=self.cosine_after_warmup,
                     steps=self.steps, lrs=self.lrs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets the learning rate of every group, times the group's ``lr_scale`` when it has one.

    Args:
        optimizer: The optimiser.
        lr: Learning rate before per-group scaling.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def clip_gradients(
    parameters: Iterable[Tensor], clip_value: float | None, clip_l2norm: float | None
) -> Tensor | None:
    """Clips gradients in place, by value or by their global L2 norm (at most one of the two).

    Call it after ``GradScaler.unscale_`` so the thresholds apply to the true gradients.

    Args:
        parameters: Parameters whose ``.grad`` is clipped.
        clip_value: Clamp every gradient element to [-clip_value, clip_value], or None.
        clip_l2norm: Rescale the gradients so their global L2 norm is at most this, or None.

    Returns:
        The global L2 norm before clipping (a 0-D tensor) when clipping by norm, else None.
    """
    if clip_value is not None and clip_l2norm is not None:
        raise ValueError("set at most one of clip_value and clip_l2norm")
    parameters = list(parameters)
    if clip_value is not None:
        nn.utils.clip_grad_value_(parameters, clip_value)
        return None
    if clip_l2norm is not None:
        return nn.utils.clip_grad_norm_(parameters, clip_l2norm)
    return None

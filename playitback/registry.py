"""The registered encoders (``ENCODER.NAME``) and saliencies (``SALIENCY.METHOD``), by name.

Torch-free, so that the config check validates the names without importing the models. Each entry is the import
path of a class, ``"module:Class"``, imported when a model is built. An encoder class subclasses
:class:`playitback.models.encoder.Encoder` and has ``from_config(cfg)``; a saliency class subclasses
:class:`playitback.models.saliency_interface.Saliency` and has ``from_config(cfg, token_dim)``. Adding one is its
own file plus one line here (docs/extending.md).
"""
from __future__ import annotations

import importlib

ENCODERS = {
    "mvit": "playitback.models.mvit:MViT",
    "ast": "playitback.models.ast:AST",
}

SALIENCIES = {
    "slots": "playitback.models.saliency:TemporalSaliency",
    "evidence": "playitback.models.evidence:FrameEvidence",
}


def resolve(table: dict[str, str], name: str, key: str) -> type:
    """The class registered as ``name`` in ``table`` (ENCODERS or SALIENCIES); ``key`` names the config key in the
    error for an unknown name."""
    if name not in table:
        raise ValueError(f"{key} {name!r} is not registered; choose one of {', '.join(table)}")
    module, _, attribute = table[name].partition(":")
    return getattr(importlib.import_module(module), attribute)

"""Model families by name (each imported when first built)."""

from __future__ import annotations

import importlib

from flax import nnx

# model.name -> "module:Class"; CLIP, SigLIP, ALIGN and LiT are configurations of "clip"
MODELS = {
    "clip": "clipjax.models.two_tower:TwoTower",
    "coca": "clipjax.models.coca:CoCa",
    "symile": "clipjax.models.symile:Symile",
}


def model_class(name: str) -> type[nnx.Module]:
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is unknown; expected one of {sorted(MODELS)}")
    module, cls = MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(cfg, rngs: nnx.Rngs) -> nnx.Module:
    """Instantiates the family `cfg.name` with the model config group."""
    return model_class(cfg.name)(cfg, rngs=rngs)

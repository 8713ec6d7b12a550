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


def build_model(cfg, rngs: nnx.Rngs, platform: str | None = None) -> nnx.Module:
    """Instantiates the family `cfg.name` with the model config group. With `platform`
    ("cpu", "gpu", "tpu": where it will run), its attention layers run `model.attention`
    as resolved there; without, XLA's attention (enough for parameters alone)."""
    from clipjax.models.attention import resolve_attention
    from clipjax.models.layers import Attention

    model = model_class(cfg.name)(cfg, rngs=rngs)
    if platform is None:
        return model
    implementation = resolve_attention(cfg.get("attention", "xla"), platform, cfg.dtype)
    for _, module in nnx.iter_graph(model):
        if isinstance(module, Attention):
            module.implementation = implementation
    return model

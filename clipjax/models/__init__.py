"""Model families by name."""

from __future__ import annotations

from flax import nnx

from clipjax.models.two_tower import TwoTower

MODELS = {"clip": TwoTower}


def build_model(cfg, rngs: nnx.Rngs) -> nnx.Module:
    """Instantiates `cfg.name` from MODELS with the model config group."""
    if cfg.name not in MODELS:
        raise ValueError(f"model.name={cfg.name!r} is unknown; expected one of {sorted(MODELS)}")
    return MODELS[cfg.name](cfg, rngs=rngs)

"""A model's graph and the logical axis names of its parameters, built without
allocating them: what the train step, the evals and the exporters rebuild from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
from flax import nnx

from clipjax.models import build_model


@dataclass(frozen=True)
class ModelSpec:
    """What the step needs to rebuild the model from its parameters."""

    graphdef: nnx.GraphDef
    logical_specs: Any  # nested dict of logical PartitionSpecs, like `params`


def model_spec(model_cfg, platform: str | None = None) -> ModelSpec:
    """Graph and logical axis names of the model for devices of `platform` (see
    `build_model`; default: JAX's default backend), without allocating parameters."""
    platform = platform or jax.default_backend()
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0), platform))
    graphdef, state = nnx.split(abstract)
    return ModelSpec(graphdef, nnx.to_pure_dict(nnx.get_partition_spec(state)))

"""The training objective as an eval: `(params, batch) -> {"loss": ..., ...}` on a placed
batch of held-out data, for `evals.NAME.kind="contrastive_loss"` entries.

The same objective as the train step (loss kind, strategy, CoCa's caption term) on the
same mesh, with the model's masking off (FLIP's patch and token dropout are training
only) and a fixed key, so an evaluation of given params is repeatable.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from clipjax.data.pixels import pixel_normalizer
from clipjax.parallel import activations_on_batch_axes, rules_table
from clipjax.train.objective import PER_EXAMPLE_KINDS, objective_from_config

VALIDATION_KIND = "contrastive_loss"


def wants_validation_loss(config) -> bool:
    evals = config.get("evals") or {}
    return any(entry.get("kind") == VALIDATION_KIND for entry in evals.values())


def make_batch_loss(config, mesh, spec, param_shardings) -> Callable | None:
    """The jitted objective of `config` on `mesh`, or None when no eval entry asks for it."""
    if not wants_validation_loss(config):
        return None
    if config.loss.kind in PER_EXAMPLE_KINDS:
        raise ValueError(
            f"a {VALIDATION_KIND!r} eval with loss.kind={config.loss.kind!r}: that loss reads "
            "per-example state that held-out samples do not have"
        )
    rules = rules_table(config.sharding_rules)
    batch_axes = rules.get("batch")
    objective = objective_from_config(config, mesh, batch_axes)
    normalize = pixel_normalizer(config.data.mean, config.data.std)

    def batch_loss(params, batch: dict) -> dict:
        batch = {**batch, "image": normalize(batch["image"])}
        with activations_on_batch_axes(mesh, batch_axes, rules.get("heads")):
            outputs = nnx.merge(spec.graphdef, params).train_outputs(batch, None)
        loss, metrics = objective(outputs, params, jax.random.key(0))
        return {"loss": loss, **metrics}

    return jax.jit(batch_loss, in_shardings=(param_shardings, None))

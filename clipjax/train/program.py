"""The train step as one program, built from a config and a mesh.

`clipjax train` runs it, `clipjax compile` compiles it for a TPU topology with
abstract inputs, and the large-batch tests lower it. All three build it here, so
what is measured is what is trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.data.loader import batch_layout, to_global
from clipjax.parallel import MeshAxes, axis_size, batch_sharding, rules_table
from clipjax.train.objective import objective_from_config
from clipjax.train.optim import build_optimizer, learning_rate_schedule
from clipjax.train.state import StatePlan, TrainState, plan_train_state
from clipjax.train.step import make_grad_fn, make_train_step, pixel_normalizer, split_micro


@dataclass(frozen=True)
class StepProgram:
    """The jitted step with everything needed to call, lower or compile it."""

    config: object
    mesh: Mesh
    rules: dict[str, MeshAxes]
    plan: StatePlan
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    batch_shardings: dict[str, NamedSharding]
    step: Callable[[TrainState, dict], tuple[TrainState, dict]]

    def sharding_for(self, ndim: int) -> NamedSharding:
        """A batch-sharded placement for an array of rank `ndim`."""
        return batch_sharding(self.mesh, self.rules, ndim)

    @property
    def host_batch(self) -> bool:
        return bool(self.config.train.get("host_batch", False))

    def batch_shape(self, example_shape: tuple[int, ...]) -> tuple[int, ...]:
        """A global batch entry's shape: `[B, ...]`, or `[k, B/k, ...]` for a host batch."""
        rows, k = self.config.train.batch_size, self.config.train.accum_steps
        return (k, rows // k, *example_shape) if self.host_batch else (rows, *example_shape)

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """One global batch as shapes, dtypes and shardings: nothing allocated."""
        return {
            name: jax.ShapeDtypeStruct(
                self.batch_shape(shape), dtype, sharding=self.batch_shardings[name]
            )
            for name, (shape, dtype) in batch_layout(self.config).items()
        }

    def place_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a batch -> the global arrays the step takes."""
        if not self.host_batch:
            return to_global(batch, self.sharding_for)
        shards = axis_size(self.mesh, self.rules.get("batch")) // jax.process_count()
        k = self.config.train.accum_steps
        return {
            name: jax.make_array_from_process_local_data(
                self.batch_shardings[name],
                split_micro(value, shards, k),
                self.batch_shape(value.shape[1:]),
            )
            for name, value in batch.items()
        }

    def lower(self, platforms: Sequence[str] | None = None) -> jax.stages.Lowered:
        """The step lowered on abstract state and batch, for `platforms` (default: the
        mesh's own), without compiling."""
        traced = self.step.trace(self.plan.abstract, self.abstract_batch())
        if platforms is None:
            return traced.lower()
        return traced.lower(lowering_platforms=tuple(platforms))


def build_step_program(config, mesh: Mesh) -> StepProgram:
    """The train step `config` describes on `mesh`: rules, optimizer and schedule,
    state plan, objective, accumulation and uint8 normalisation."""
    rules = rules_table(config.sharding_rules)
    batch_axes = rules.get("batch")
    frozen = tuple(config.model.get("frozen", ()))
    schedule = learning_rate_schedule(config.optim, config.train.steps)
    tx = build_optimizer(config.optim, config.train.steps, frozen)
    plan = plan_train_state(config.model, config.seed, tx, mesh, rules)
    host_batch = bool(config.train.get("host_batch", False))
    grad_fn = make_grad_fn(
        plan.spec,
        objective_from_config(config, mesh, batch_axes),
        mesh,
        batch_axes,
        config.train.accum_steps,
        frozen=frozen,
        normalize=pixel_normalizer(config.data.mean, config.data.std),
        host_batch=host_batch,
    )
    batch_shardings = {
        name: _batch_placement(mesh, rules, len(shape) + 1, host_batch)
        for name, (shape, _) in batch_layout(config).items()
    }
    step = make_train_step(grad_fn, tx, plan.shardings, batch_shardings, schedule, config.seed)
    return StepProgram(config, mesh, rules, plan, tx, schedule, batch_shardings, step)


def _batch_placement(mesh: Mesh, rules, ndim: int, host_batch: bool) -> NamedSharding:
    """Batch-sharded on the chips, or split `[k, B/k, ...]` in pinned host memory."""
    if not host_batch:
        return batch_sharding(mesh, rules, ndim)
    spec = P(None, rules.get("batch"), *([None] * (ndim - 1)))
    return NamedSharding(mesh, spec, memory_kind="pinned_host")

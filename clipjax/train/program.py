"""The train step as one program, built from a config and a mesh.

`clipjax train` runs it, `clipjax compile` compiles it for a TPU topology with
abstract inputs, and the large-batch tests lower it. All three build it here, so
what is measured is what is trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.data.loader import batch_layout, to_global
from clipjax.data.pixels import pixel_normalizer
from clipjax.losses.isogclr import ISogCLRSpec
from clipjax.parallel import MeshAxes, axis_size, batch_sharding, rules_table
from clipjax.train.example_state import ExampleTable
from clipjax.train.objective import objective_from_config
from clipjax.train.optim import build_optimizer, learning_rate_schedule
from clipjax.train.state import StatePlan, TrainState, plan_train_state
from clipjax.train.step import make_grad_fn, make_train_step, split_micro


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
    def host_entries(self) -> dict[str, tuple[int, ...]]:
        """The batch entries kept in host memory (`train.host_batch`): the pixels."""
        return host_entries(self.config)

    def batch_shape(self, name: str, example_shape: tuple[int, ...]) -> tuple[int, ...]:
        """A global batch entry's shape: `[B, ...]`, or `[k, B/k, example bytes / 4]` in
        host memory."""
        rows, k = self.config.train.batch_size, self.config.train.accum_steps
        if name in self.host_entries:
            return (k, rows // k, math.prod(example_shape) // 4)
        return (rows, *example_shape)

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """One global batch as shapes, dtypes and shardings: nothing allocated."""
        return {
            name: jax.ShapeDtypeStruct(
                self.batch_shape(name, shape),
                np.dtype(np.uint32) if name in self.host_entries else dtype,
                sharding=self.batch_shardings[name],
            )
            for name, (shape, dtype) in batch_layout(self.config).items()
        }

    def place_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a batch -> the global arrays the step takes; entries
        kept in host memory are split into micro-batches here, on the host."""
        on_chips = {k: v for k, v in batch.items() if k not in self.host_entries}
        placed = to_global(on_chips, self.sharding_for)
        shards = axis_size(self.mesh, self.rules.get("batch")) // jax.process_count()
        for name in self.host_entries:
            value = batch[name]
            placed[name] = jax.make_array_from_process_local_data(
                self.batch_shardings[name],
                split_micro(packed_words(value), shards, self.config.train.accum_steps),
                self.batch_shape(name, value.shape[1:]),
            )
        return placed

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
    table = example_table(config, mesh, batch_axes)
    plan = plan_train_state(config.model, config.seed, tx, mesh, rules, table)
    in_host = host_entries(config)
    grad_fn = make_grad_fn(
        plan.spec,
        objective_from_config(config, mesh, batch_axes),
        mesh,
        batch_axes,
        config.train.accum_steps,
        frozen=frozen,
        normalize=_normalizer(config),
        host_entries=in_host,
        heads_axes=rules.get("heads"),
    )
    batch_shardings = {
        name: _batch_placement(mesh, rules, len(shape) + 1, name in in_host)
        for name, (shape, _) in batch_layout(config).items()
    }
    skip = config.train.on_nonfinite == "skip"
    step = make_train_step(
        grad_fn, tx, plan.shardings, batch_shardings, schedule, config.seed, skip, table
    )
    return StepProgram(config, mesh, rules, plan, tx, schedule, batch_shardings, step)


def example_table(config, mesh: Mesh, batch_axes: MeshAxes) -> ExampleTable | None:
    """The per-example state iSogCLR keeps: one row per example number of the
    training shards (`data.samples_per_shard` slots per shard)."""
    if config.loss.kind != "isogclr":
        return None
    from clipjax.data.loader import example_numbering

    try:
        examples = example_numbering(config.data).size
    except ValueError as exc:  # e.g. `clipjax compile` without data.train_shards
        raise ValueError(
            f"loss.kind='isogclr' sizes its per-example state from data.train_shards "
            f"(the files need not exist to compile): {exc}"
        ) from exc
    initial = ISogCLRSpec.from_config(config.loss).initial_values()
    return ExampleTable.create(examples, initial, mesh, batch_axes)


def _normalizer(config):
    """uint8 pixels -> the model's input; None for data without images (Symile's XOR)."""
    if "image" not in batch_layout(config):
        return None
    return pixel_normalizer(config.data.mean, config.data.std)


def host_entries(config) -> dict[str, tuple[int, ...]]:
    """With `train.host_batch`, the images wait in host memory (name: example shape); the
    tokens are small and stay on the chips (the TPU compiler of libtpu 0.0.42 rejects
    slicing an int32 token array held in host memory: a RET_CHECK on its tiled layout)."""
    if not config.train.get("host_batch", False):
        return {}
    return {"image": batch_layout(config)["image"][0]}


def packed_words(pixels: np.ndarray) -> np.ndarray:
    """uint8 `[n, ...]` -> uint32 `[n, bytes / 4]`, each example's bytes in words."""
    flat = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(len(pixels), -1)
    if flat.shape[1] % 4:
        raise ValueError(f"{flat.shape[1]} bytes per example do not pack into uint32 words")
    return flat.view(np.uint32)


def _batch_placement(mesh: Mesh, rules, ndim: int, in_host: bool) -> NamedSharding:
    """Batch-sharded on the chips, or split `[k, B/k, words]` in pinned host memory."""
    if not in_host:
        return batch_sharding(mesh, rules, ndim)
    return NamedSharding(mesh, P(None, rules.get("batch"), None), memory_kind="pinned_host")

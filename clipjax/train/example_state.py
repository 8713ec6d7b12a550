"""State kept per training example (iSogCLR's temperatures and moving averages): one
`[N]` float32 array per field, sharded over the batch axes like a batch, saved in
the checkpoint with the train state and restored onto any mesh.

A step reads the rows of its batch's examples and writes them back, by their stable
numbers (`batch["index"]`, see `clipjax.data.example_index`). Neither moves the table:
every device receives the batch's numbers (B int32), answers those it holds, and a
reduce-scatter hands each row's values to the device that holds that row; writing
back is the same in reverse. Per step that is O(B) bytes whatever N is. When an
example is twice in a batch (resampled shards), its last occurrence is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.parallel import MeshAxes, axis_size, axis_tuple

ROWS_ALIGN = 4096


@dataclass(frozen=True)
class ExampleTable:
    """`size` examples (rounded up to whole shards), each with `initial` values."""

    size: int
    initial: dict[str, float]
    mesh: Mesh
    batch_axes: MeshAxes

    @classmethod
    def create(cls, examples: int, initial: dict[str, float], mesh: Mesh, batch_axes):
        # Padded to whole blocks of ROWS_ALIGN, not to this mesh's shard count: the
        # shape is then the same on every mesh, and a checkpoint restores onto any.
        size = math.ceil(examples / ROWS_ALIGN) * ROWS_ALIGN
        shards = axis_size(mesh, batch_axes)
        if size % shards:
            raise ValueError(
                f"the per-example state's {size} rows do not split over {shards} batch "
                f"shards; use a power-of-two batch shard count (at most {ROWS_ALIGN})"
            )
        return cls(size, dict(initial), mesh, batch_axes)

    @property
    def sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(self.batch_axes))

    def init(self) -> dict[str, jax.Array]:
        return {
            name: jnp.full((self.size,), value, jnp.float32) for name, value in self.initial.items()
        }

    def lookup(self, table: dict[str, jax.Array], index: jax.Array) -> dict[str, jax.Array]:
        """The batch's rows of every field, `[B]` each, sharded like `index`."""
        names = list(table)
        stacked = jnp.stack([table[n] for n in names], axis=1)
        axes = axis_tuple(self.batch_axes)

        def body(local_table, local_index):
            index = jax.lax.all_gather(local_index, axes, tiled=True)
            local, held = _held(index, local_table.shape[0], axes)
            values = jnp.where(held[:, None], local_table[jnp.where(held, local, 0)], 0.0)
            return jax.lax.psum_scatter(values, axes, scatter_dimension=0, tiled=True)

        rows = jax.shard_map(
            body,
            mesh=self.mesh,
            in_specs=(P(axes, None), P(axes)),
            out_specs=P(axes, None),
        )(stacked, index)
        return {name: rows[:, i] for i, name in enumerate(names)}

    def store(
        self, table: dict[str, jax.Array], index: jax.Array, rows: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """`table` with the batch's examples set to `rows` (`[B]` per field)."""
        names = list(table)
        stacked = jnp.stack([table[n] for n in names], axis=1)
        values = jnp.stack([rows[n].astype(jnp.float32) for n in names], axis=1)
        axes = axis_tuple(self.batch_axes)

        def body(local_table, local_index, local_values):
            index = jax.lax.all_gather(local_index, axes, tiled=True)
            values = jax.lax.all_gather(local_values, axes, tiled=True)
            local, held = _held(index, local_table.shape[0], axes)
            target = jnp.where(held & _last_occurrence(index), local, local_table.shape[0])
            return local_table.at[target].set(values, mode="drop")

        updated = jax.shard_map(
            body,
            mesh=self.mesh,
            in_specs=(P(axes, None), P(axes), P(axes, None)),
            out_specs=P(axes, None),
        )(stacked, index, values)
        return {name: updated[:, i] for i, name in enumerate(names)}


def _held(index: jax.Array, local_size: int, axes) -> tuple[jax.Array, jax.Array]:
    """Each global example number's position in this device's slice, and whether held."""
    local = index - jax.lax.axis_index(axes) * local_size
    return local, (local >= 0) & (local < local_size)


def _last_occurrence(index: jax.Array) -> jax.Array:
    """True where no later position of `index` holds the same number."""
    order = jnp.argsort(index, stable=True)
    ordered = index[order]
    last = jnp.concatenate([ordered[1:] != ordered[:-1], jnp.ones((1,), bool)])
    return jnp.zeros_like(last).at[order].set(last)

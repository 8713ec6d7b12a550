"""State kept per training example (iSogCLR's temperatures and moving averages): one
`[N]` float32 array per field, sharded over the batch axes like a batch, saved in
the checkpoint with the train state and restored onto any mesh.

A step reads the rows of its batch's examples and writes them back, by their stable
numbers (`batch["index"]`, see `clipjax.data.example_index`). Neither moves the table:
every device receives the batch's numbers (B int32), answers those it holds, and a
reduce-scatter hands each row's values to the device that holds that row; writing
back is the same in reverse. Per step the collectives move O(B) bytes whatever N is;
the writes update the table in place (it is donated with the train state). When an
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


def split_problems(batch_shards: int) -> list[str]:
    """The table's rows come in blocks of ROWS_ALIGN: a batch shard count must divide it."""
    if ROWS_ALIGN % batch_shards == 0:
        return []
    return [
        f"the per-example state's rows (blocks of {ROWS_ALIGN}) do not split over "
        f"{batch_shards} batch shards; use a power-of-two batch shard count"
    ]


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
        problems = split_problems(axis_size(mesh, batch_axes))
        if problems:
            raise ValueError(problems[0])
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
        axes = axis_tuple(self.batch_axes)

        def body(local_table, local_index):
            index = jax.lax.all_gather(local_index, axes, tiled=True)
            size = next(iter(local_table.values())).shape[0]
            local, held = _held(index, size, axes)
            at = jnp.where(held, local, 0)
            # Each field stays its own 1-D array: a stacked [n, fields] copy of the table
            # would be padded to 128 lanes on TPU. Only the batch's [B, fields] is stacked.
            values = jnp.stack([jnp.where(held, v[at], 0.0) for v in local_table.values()], 1)
            rows = jax.lax.psum_scatter(values, axes, scatter_dimension=0, tiled=True)
            return {name: rows[:, i] for i, name in enumerate(local_table)}

        specs = {name: P(axes) for name in table}
        return jax.shard_map(body, mesh=self.mesh, in_specs=(specs, P(axes)), out_specs=specs)(
            table, index
        )

    def store(
        self, table: dict[str, jax.Array], index: jax.Array, rows: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """`table` with the batch's examples set to `rows` (`[B]` per field)."""
        axes = axis_tuple(self.batch_axes)
        rows = {name: rows[name].astype(jnp.float32) for name in table}

        def body(local_table, local_index, local_rows):
            index = jax.lax.all_gather(local_index, axes, tiled=True)
            size = next(iter(local_table.values())).shape[0]
            local, held = _held(index, size, axes)
            target = jnp.where(held & _last_occurrence(index), local, size)
            return {
                name: column.at[target].set(
                    jax.lax.all_gather(local_rows[name], axes, tiled=True), mode="drop"
                )
                for name, column in local_table.items()
            }

        specs = {name: P(axes) for name in table}
        return jax.shard_map(
            body, mesh=self.mesh, in_specs=(specs, P(axes), specs), out_specs=specs
        )(table, index, rows)


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

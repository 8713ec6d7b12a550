"""Cross-device strategies: which columns a device's rows are scored against, and how.

The loss runs under `jax.shard_map` on a *loss mesh*: the same devices as the
training mesh, with the batch axes flattened and split into
`loss_group x loss_member` (groups of `group_size` consecutive batch shards)
and the other mesh axes kept. Columns come from the `loss_member` axis only,
so `gather` (one group holding every batch shard) and `grouped` differ only in
the group size, and `ring` works within groups too.

Per step and device, with b local rows, d dims, 4-byte floats and a group of g
devices, the image and text embeddings that arrive are
  gather:  2 * (n - 1) * b * d * 4 bytes  (n = all batch shards)
  grouped: 2 * (g - 1) * b * d * 4 bytes  (the same, over g instead of n)
  ring:    half those bytes for the softmax loss (one block travels, and its
           running column sums with it), in n - 1 ppermute hops; twice that in the
           backward pass (the block and its gradient). It never holds more than one block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh

from clipjax.losses.ring import ring_lse, ring_row_lse, ring_softplus_sum
from clipjax.parallel import axis_tuple

STRATEGIES = ("gather", "grouped", "ring")
GROUP = "loss_group"
MEMBER = "loss_member"
LOSS_AXES = (GROUP, MEMBER)


def check_group_size(group_size: int, shards: int, batch_axes: Sequence[str] = ()) -> None:
    """Raises unless `group_size` batch shards form whole loss groups."""
    if group_size < 1 or shards % group_size:
        where = f" (mesh axes {tuple(batch_axes)})" if batch_axes else ""
        raise ValueError(
            f"loss.group_size={group_size} must divide the {shards} batch shards{where}"
        )


def loss_mesh(mesh: Mesh, batch_axes: str | Sequence[str] | None, group_size: int) -> Mesh:
    """`mesh` with its batch axes regrouped as `(loss_group, loss_member)`.

    The device order is unchanged when the batch axes lead the mesh (the
    default rules), so batch-sharded arrays need no movement.
    """
    batch = axis_tuple(batch_axes)
    others = [a for a in mesh.axis_names if a not in batch]
    shards = math.prod(mesh.shape[a] for a in batch)
    check_group_size(group_size, shards, batch)
    order = [mesh.axis_names.index(a) for a in (*batch, *others)]
    devices = np.transpose(mesh.devices, order).reshape(
        shards // group_size, group_size, *(mesh.shape[a] for a in others)
    )
    names = (*LOSS_AXES, *others)
    return Mesh(devices, names, axis_types=(AxisType.Auto,) * len(names))


def varying(x: jax.Array) -> jax.Array:
    """Marks a value that is the same on every device as device-varying, so it can
    meet per-device values in custom VJPs and loops (its gradient is then summed)."""
    # One axis at a time: the transpose is then psum_all's two collectives.
    return jax.lax.pcast(jax.lax.pcast(x, GROUP, to="varying"), MEMBER, to="varying")


def psum_all(x):
    """Sum over every device of the loss mesh, as one collective per loss axis.

    A single psum over both axes makes XLA abort (jax 0.12, CPU) when a group
    boundary splits a training-mesh axis, e.g. groups of 4 on data=4 x fsdp=2.
    """
    return jax.lax.psum(jax.lax.psum(x, MEMBER), GROUP)


def pmax_all(x):
    return jax.lax.pmax(jax.lax.pmax(x, MEMBER), GROUP)


@dataclass(frozen=True)
class PairScorer:
    """Reductions over (local row, group column) pairs for one strategy.

    `row_lse(rows, cols, scale, exclude_diag)`: per local row, the log-sum-exp of
    `scale * row . col` over every column of the group (optionally without the
    row's own positive); `softplus_sum(rows, cols, scale, bias)`: the sum of
    `softplus(scale * row . col + bias)` over the same pairs. `cols` are this
    device's columns; the strategy brings the rest.
    """

    ring: bool
    group_size: int
    ring_chunk: int = 1024

    def row_lse(self, rows, cols, scale, exclude_diag: bool) -> jax.Array:
        if self.ring:
            return ring_row_lse(
                rows, cols, scale, exclude_diag, (MEMBER,), self.group_size, self.ring_chunk
            )
        scores = scale * rows @ jax.lax.all_gather(cols, MEMBER, tiled=True).T
        if exclude_diag:
            offset = jax.lax.axis_index(MEMBER) * rows.shape[0]
            own = jnp.arange(rows.shape[0])[:, None] + offset == jnp.arange(scores.shape[1])
            scores = jnp.where(own, -jnp.inf, scores)
        return jax.nn.logsumexp(scores, axis=1)

    def lse_both_ways(self, rows, cols, scale, exclude_diag: bool) -> tuple[jax.Array, jax.Array]:
        """(`row_lse(rows, cols)`, `row_lse(cols, rows)`): the ring scores each pair once."""
        if self.ring:
            return ring_lse(
                rows, cols, scale, exclude_diag, (MEMBER,), self.group_size, self.ring_chunk
            )
        return self.row_lse(rows, cols, scale, exclude_diag), self.row_lse(
            cols, rows, scale, exclude_diag
        )

    def softplus_sum(self, rows, cols, scale, bias) -> jax.Array:
        if self.ring:
            return ring_softplus_sum(
                rows, cols, scale, bias, (MEMBER,), self.group_size, self.ring_chunk
            )
        scores = scale * rows @ jax.lax.all_gather(cols, MEMBER, tiled=True).T + bias
        return jnp.sum(jax.nn.softplus(scores))


def group_size_for(strategy: str, requested: int, shards: int) -> int:
    """`gather` and `ring` contrast the whole batch; `grouped` uses `requested`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"loss.strategy={strategy!r} is not one of {STRATEGIES}")
    return requested if strategy == "grouped" else shards

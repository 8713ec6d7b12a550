"""Geometry of the embedding space (Fahim et al., "It's Not a Modality Gap").

For unit vectors ||a - b||^2 = 2 - 2 a.b, so
  alignment  = mean_i ||x_i - y_i||^2
  uniformity = log mean_{i != j} exp(-2 ||a_i - a_j||^2)
             = logsumexp_{i != j}(4 a_i.a_j) - 4 - log(B (B - 1)),
computed within each loss group with the strategy's row log-sum-exp, then
averaged over groups. The cross-modal variant pairs x_i with y_j, i != j.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from clipjax.losses.strategies import GROUP, MEMBER, PairScorer, psum_all


def alignment_sum(image, text) -> jax.Array:
    """This device's share of sum_i ||x_i - y_i||^2."""
    return jnp.sum(jnp.square(image - text))


def uniformity(scorer: PairScorer, rows, cols, group_batch: int, groups: int) -> jax.Array:
    """log mean_{i != j} exp(-2 ||rows_i - cols_j||^2) within groups, averaged over groups."""
    if group_batch < 2:
        raise ValueError(f"uniformity needs at least 2 examples per loss group, got {group_batch}")
    row_lse = scorer.row_lse(rows, cols, 4.0 * jnp.ones_like(rows[0, 0]), True)
    top = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(row_lse)), MEMBER)
    group_lse = top + jnp.log(jax.lax.psum(jnp.sum(jnp.exp(row_lse - top)), MEMBER))
    value = group_lse - 4.0 - math.log(group_batch * (group_batch - 1))
    return jax.lax.psum(value, GROUP) / groups


LOCAL_UNIFORMITY_ROWS = 2048  # the logged estimate's rows per device: O(rows^2) scores


def local_uniformity(rows, cols) -> jax.Array | None:
    """The same statistic over each device's own rows only (its first
    `LOCAL_UNIFORMITY_ROWS`: at 524,288 rows a device, all pairs would be 1 TiB of
    scores), averaged over devices: a communication-free estimate for logging when the
    term is not in the loss. None when a device holds a single row (no pair to measure)."""
    count = min(rows.shape[0], LOCAL_UNIFORMITY_ROWS)
    if count < 2:
        return None
    rows, cols = rows[:count], cols[:count]
    scores = 4.0 * rows @ cols.T
    scores = jnp.where(jnp.eye(count, dtype=bool), -jnp.inf, scores)
    value = jax.nn.logsumexp(scores) - 4.0 - math.log(count * (count - 1))
    devices = jax.lax.psum(1, MEMBER) * jax.lax.psum(1, GROUP)
    return psum_all(value) / devices


def centroid_gap(image_sum, text_sum, batch: int) -> jax.Array:
    """Distance between the image and the text embedding centroids."""
    return jnp.linalg.norm((image_sum - text_sum) / batch)

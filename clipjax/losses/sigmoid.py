"""SigLIP's pairwise sigmoid loss, per device inside the loss shard_map.

With z_ij = scale * x_i . y_j + bias and labels +1 on the diagonal, -1 elsewhere,
  sum_ij -log sigmoid(label_ij z_ij) = sum_ij softplus(z_ij) - sum_i z_ii,
so the strategies only need the all-pairs softplus sum; the loss is that over
the global batch size (SigLIP normalises by the batch, not the pairs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clipjax.losses.strategies import PairScorer


def sigmoid_local_sum(scorer: PairScorer, image, text, scale, bias) -> jax.Array:
    """This device's rows' share of the summed sigmoid loss."""
    positives = scale * jnp.sum(image * text) + bias * image.shape[0]
    return scorer.softplus_sum(image, text, scale, bias) - positives

"""CWCL (Srinivasa et al. 2023, "CWCL: Cross-Modal Transfer with Continuously
Weighted Contrastive Loss"): LiT-style transfer where the trained tower's rows are
pulled towards every column in proportion to how alike the frozen tower finds them.

For rows p_i of the trained tower and columns q_j of the frozen one, with the
frozen tower's own similarities as weights,

    w_ij = (<q_i, q_j> + 1) / 2                      (cosines mapped to [0, 1])
    L_CWCL = -1/B sum_i  sum_j w_ij log softmax_j(s <p_i, q_j>) / sum_j w_ij

and the other direction (frozen rows, trained columns) keeps CLIP's one-hot targets;
the loss is the mean of the two, on CLIP's scale. The weights are targets: no
gradient flows through them; the columns q_j themselves get theirs as in CE.

Because w_ij is affine in <q_i, q_j>, the weighted sum over a row needs no B x B
matrix: sum_j w_ij q_j = (M q_i + t) / 2 and sum_j w_ij = (<q_i, t> + B) / 2, with
M = sum_j q_j q_j^T (d x d) and t = sum_j q_j psummed over the loss group (M's
second factor, the one inside w, is a constant). The
target term is exact on every strategy (gather, grouped, ring) and costs O(b d^2)
per device, next to the strategy's own log-sum-exps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from clipjax.losses.strategies import MEMBER

WEIGHT_SOURCES = ("image", "text")


def cwcl_local_sum(scorer, image, text, scale, group_batch: int, weights_from: str):
    """This device's rows' share of the summed CWCL + one-hot CE over both directions
    (divide the psum by 2B); `weights_from` names the frozen tower's embeddings."""
    image_lse, text_lse = scorer.lse_both_ways(image, text, scale, False)
    if weights_from == "image":
        frozen, trained, trained_lse, frozen_lse = image, text, text_lse, image_lse
    else:
        frozen, trained, trained_lse, frozen_lse = text, image, image_lse, text_lse
    q = jax.lax.stop_gradient(frozen)  # the weights' copy
    second_moment = jax.lax.psum(frozen.T @ q, MEMBER)  # sum_j q_j (q_j, constant)^T
    total = jax.lax.psum(frozen.sum(0), MEMBER)
    weighted_columns = 0.5 * (q @ second_moment.T + total)  # sum_j w_ij q_j
    weight_sums = 0.5 * (q @ jax.lax.stop_gradient(total) + group_batch)  # >= w_ii = 1
    soft_target = jnp.sum(trained * weighted_columns, axis=1) / weight_sums
    per_row = trained_lse - scale * soft_target
    per_row += frozen_lse - scale * jnp.sum(image * text, axis=1)
    return jnp.sum(per_row)

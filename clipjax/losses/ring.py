"""Ring reductions over all (row, column) pairs with memory O(b*b) per device.

Column blocks travel round the devices of `axes` with `ppermute`. Neither the
b x B scores nor the gathered columns are kept for the backward pass: each
function has a custom VJP that sends the blocks round again, recomputes each
block's scores and sends the column gradients home with them (Inf-CL style).

Both run per device inside `jax.shard_map`; `rows`, `cols` and the scalars
must be device-varying over `vary_axes` (see `strategies.varying`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

# A finite "minus infinity" for the running maximum, so that fully masked rows
# give exp(-inf - floor) = 0 instead of NaN.
_FLOOR = float(jnp.finfo(jnp.float32).min)


def _shift(tree, axes: tuple[str, ...], n: int):
    perm = [(i, (i + 1) % n) for i in range(n)]
    return jax.tree.map(lambda a: jax.lax.ppermute(a, axes, perm), tree)


def _own_diagonal(step, rows: int, cols: int) -> jax.Array:
    """At ring step k a device holds the block of device (self - k): its own at k = 0."""
    return jnp.logical_and(step == 0, jnp.eye(rows, cols, dtype=bool))


def _lse_scores(rows, block, scale, step, exclude_diag: bool):
    cosine = rows @ block.T
    scores = scale * cosine
    if exclude_diag:
        scores = jnp.where(_own_diagonal(step, *scores.shape), -jnp.inf, scores)
    return cosine, scores


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def ring_row_lse(rows, cols, scale, exclude_diag: bool, axes: tuple[str, ...], n: int):
    """`lse_j(scale * rows_i . col_j)` over every column of the ring: shape `[b]`."""
    return _lse_forward(rows, cols, scale, exclude_diag, axes, n)


def _lse_forward(rows, cols, scale, exclude_diag, axes, n):
    def accumulate(step, block, best, total):
        _, scores = _lse_scores(rows, block, scale, step, exclude_diag)
        new_best = jnp.maximum(best, scores.max(axis=1))
        total = total * jnp.exp(best - new_best) + jnp.exp(scores - new_best[:, None]).sum(1)
        return new_best, total

    best = jnp.full(rows.shape[:1], _FLOOR, rows.dtype) + 0 * rows[:, 0]  # varying like rows
    best, total = accumulate(0, cols, best, jnp.zeros_like(best))

    def body(step, carry):
        block, best, total = carry
        block = _shift(block, axes, n)
        return (block, *accumulate(step, block, best, total))

    _, best, total = jax.lax.fori_loop(1, n, body, (cols, best, total))
    return best + jnp.log(total)


def _lse_fwd(rows, cols, scale, exclude_diag, axes, n):
    lse = _lse_forward(rows, cols, scale, exclude_diag, axes, n)
    return lse, (rows, cols, scale, lse)


def _lse_bwd(exclude_diag, axes, n, residuals, grad):
    rows, cols, scale, lse = residuals

    def block_grads(step, block):
        cosine, scores = _lse_scores(rows, block, scale, step, exclude_diag)
        weights = grad[:, None] * jnp.exp(scores - lse[:, None])  # d loss / d score
        return scale * weights @ block, scale * weights.T @ rows, jnp.sum(weights * cosine)

    d_rows, d_cols, d_scale = block_grads(0, cols)

    def body(step, carry):
        travelling, d_rows, d_scale = carry
        block, acc = _shift(travelling, axes, n)
        dr, db, ds = block_grads(step, block)
        return (block, acc + db), d_rows + dr, d_scale + ds

    (_, d_cols), d_rows, d_scale = jax.lax.fori_loop(1, n, body, ((cols, d_cols), d_rows, d_scale))
    return d_rows, _shift(d_cols, axes, n), d_scale


ring_row_lse.defvjp(_lse_fwd, _lse_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def ring_softplus_sum(rows, cols, scale, bias, axes: tuple[str, ...], n: int):
    """`sum_ij softplus(scale * rows_i . col_j + bias)` over every column of the ring
    (SigLIP's chunked sigmoid loss, less the positives' correction)."""
    return _softplus_forward(rows, cols, scale, bias, axes, n)


def _softplus_forward(rows, cols, scale, bias, axes, n):
    def accumulate(block, total):
        return total + jnp.sum(jax.nn.softplus(scale * rows @ block.T + bias))

    def body(_, carry):
        block, total = carry
        block = _shift(block, axes, n)
        return block, accumulate(block, total)

    _, total = jax.lax.fori_loop(1, n, body, (cols, accumulate(cols, 0.0 * bias)))
    return total


def _softplus_fwd(rows, cols, scale, bias, axes, n):
    return _softplus_forward(rows, cols, scale, bias, axes, n), (rows, cols, scale, bias)


def _softplus_bwd(axes, n, residuals, grad):
    rows, cols, scale, bias = residuals

    def block_grads(block):
        cosine = rows @ block.T
        weights = grad * jax.nn.sigmoid(scale * cosine + bias)
        return (
            scale * weights @ block,
            scale * weights.T @ rows,
            jnp.sum(weights * cosine),
            jnp.sum(weights),
        )

    d_rows, d_cols, d_scale, d_bias = block_grads(cols)

    def body(_, carry):
        travelling, d_rows, d_scale, d_bias = carry
        block, acc = _shift(travelling, axes, n)
        dr, db, ds, dbias = block_grads(block)
        return (block, acc + db), d_rows + dr, d_scale + ds, d_bias + dbias

    (_, d_cols), d_rows, d_scale, d_bias = jax.lax.fori_loop(
        1, n, body, ((cols, d_cols), d_rows, d_scale, d_bias)
    )
    return d_rows, _shift(d_cols, axes, n), d_scale, d_bias


ring_softplus_sum.defvjp(_softplus_fwd, _softplus_bwd)

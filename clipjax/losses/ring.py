"""Ring reductions over all (row, column) pairs with memory O(b * chunk) per device.

Column blocks travel round the devices of `axes` with `ppermute`; each block
is scored in column chunks of at most `chunk`, so neither the b x B scores nor
a whole b x b block is ever materialised. Nothing is kept for the backward
pass but the inputs and one number per row: each function has a custom VJP
that sends the blocks round again, recomputes the chunks' scores and sends the
column gradients home with their block (Inf-CL style).

Both run per device inside `jax.shard_map`; `rows`, `cols` and the scalars
must be device-varying (see `strategies.varying`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

# A finite "minus infinity" for the running maximum, so that fully masked rows
# give exp(-inf - floor) = 0 instead of NaN.
_FLOOR = float(jnp.finfo(jnp.float32).min)


def chunk_size(columns: int, chunk: int) -> int:
    """The largest divisor of `columns` not above `chunk` (chunks must tile a block)."""
    size = max(1, min(chunk, columns))
    while columns % size:
        size -= 1
    return size


def _shift(tree, axes: tuple[str, ...], n: int):
    perm = [(i, (i + 1) % n) for i in range(n)]
    return jax.tree.map(lambda a: jax.lax.ppermute(a, axes, perm), tree)


def _chunk_scores(rows, block, scale, step, start, size, exclude_diag: bool):
    """Cosines and scaled scores of `rows` against columns [start, start + size)."""
    cols = jax.lax.dynamic_slice_in_dim(block, start, size)
    cosine = rows @ cols.T
    scores = scale * cosine
    if exclude_diag:  # at ring step k a device holds block (self - k): its own at k = 0
        own = jnp.arange(rows.shape[0])[:, None] == start + jnp.arange(size)[None, :]
        scores = jnp.where(jnp.logical_and(step == 0, own), -jnp.inf, scores)
    return cols, cosine, scores


def _over_chunks(block, chunk, body, carry):
    size = chunk_size(block.shape[0], chunk)
    return jax.lax.fori_loop(0, block.shape[0] // size, lambda j, c: body(j * size, size, c), carry)


def _over_ring(block, axes, n, carry, visit):
    """`visit(step, block, carry)` for the local block, then each arriving block."""
    carry = visit(0, block, carry)

    def body(step, state):
        block, carry = state
        block = _shift(block, axes, n)
        return block, visit(step, block, carry)

    return jax.lax.fori_loop(1, n, body, (block, carry))[1]


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def ring_row_lse(rows, cols, scale, exclude_diag: bool, axes: tuple[str, ...], n: int, chunk: int):
    """`lse_j(scale * rows_i . col_j)` over every column of the ring: shape `[b]`."""
    return _lse_forward(rows, cols, scale, exclude_diag, axes, n, chunk)


def _lse_forward(rows, cols, scale, exclude_diag, axes, n, chunk):
    def visit(step, block, carry):
        def body(start, size, state):
            best, total = state
            _, _, scores = _chunk_scores(rows, block, scale, step, start, size, exclude_diag)
            new_best = jnp.maximum(best, scores.max(axis=1))
            total = total * jnp.exp(best - new_best) + jnp.exp(scores - new_best[:, None]).sum(1)
            return new_best, total

        return _over_chunks(block, chunk, body, carry)

    best = jnp.full(rows.shape[:1], _FLOOR, rows.dtype) + 0 * rows[:, 0]  # varying like rows
    best, total = _over_ring(cols, axes, n, (best, jnp.zeros_like(best)), visit)
    return best + jnp.log(total)


def _lse_fwd(rows, cols, scale, exclude_diag, axes, n, chunk):
    lse = _lse_forward(rows, cols, scale, exclude_diag, axes, n, chunk)
    return lse, (rows, cols, scale, lse)


def _lse_bwd(exclude_diag, axes, n, chunk, residuals, grad):
    rows, cols, scale, lse = residuals

    def chunk_grads(step, block, start, size):
        part, cosine, scores = _chunk_scores(rows, block, scale, step, start, size, exclude_diag)
        weights = grad[:, None] * jnp.exp(scores - lse[:, None])  # d loss / d score
        return scale * weights @ part, scale * weights.T @ rows, jnp.sum(weights * cosine)

    return _ring_backward(rows, cols, axes, n, chunk, chunk_grads, scale)


def _ring_backward(rows, cols, axes, n, chunk, chunk_grads, *scalars):
    """Sends (block, its gradient) round the ring; returns d_rows, d_cols, d_scalars."""

    def visit(step, travelling, carry):
        block, d_block = travelling
        d_rows, d_scalars = carry

        def body(start, size, state):
            d_rows, d_block, d_scalars = state
            dr, db, *ds = chunk_grads(step, block, start, size)
            d_block = jax.lax.dynamic_update_slice_in_dim(
                d_block, jax.lax.dynamic_slice_in_dim(d_block, start, size) + db, start, 0
            )
            return d_rows + dr, d_block, tuple(a + b for a, b in zip(d_scalars, ds, strict=True))

        d_rows, d_block, d_scalars = _over_chunks(block, chunk, body, (d_rows, d_block, d_scalars))
        return (block, d_block), (d_rows, d_scalars)

    zeros = tuple(jnp.zeros_like(s) for s in scalars)
    start = (cols, jnp.zeros_like(cols))
    carry = visit(0, start, (jnp.zeros_like(rows), zeros))

    def body(step, state):
        travelling, carry = state
        return visit(step, _shift(travelling, axes, n), carry)

    (_, d_cols), (d_rows, d_scalars) = jax.lax.fori_loop(1, n, body, carry)
    return (d_rows, _shift(d_cols, axes, n), *d_scalars)


ring_row_lse.defvjp(_lse_fwd, _lse_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def ring_softplus_sum(rows, cols, scale, bias, axes: tuple[str, ...], n: int, chunk: int):
    """`sum_ij softplus(scale * rows_i . col_j + bias)` over every column of the ring
    (SigLIP's chunked sigmoid loss, less the positives' correction)."""
    return _softplus_forward(rows, cols, scale, bias, axes, n, chunk)


def _softplus_forward(rows, cols, scale, bias, axes, n, chunk):
    def visit(step, block, total):
        def body(start, size, total):
            _, _, scores = _chunk_scores(rows, block, scale, step, start, size, False)
            return total + jnp.sum(jax.nn.softplus(scores + bias))

        return _over_chunks(block, chunk, body, total)

    return _over_ring(cols, axes, n, 0.0 * bias, visit)


def _softplus_fwd(rows, cols, scale, bias, axes, n, chunk):
    return _softplus_forward(rows, cols, scale, bias, axes, n, chunk), (rows, cols, scale, bias)


def _softplus_bwd(axes, n, chunk, residuals, grad):
    rows, cols, scale, bias = residuals

    def chunk_grads(step, block, start, size):
        part, cosine, scores = _chunk_scores(rows, block, scale, step, start, size, False)
        weights = grad * jax.nn.sigmoid(scores + bias)
        return (
            scale * weights @ part,
            scale * weights.T @ rows,
            jnp.sum(weights * cosine),
            jnp.sum(weights),
        )

    return _ring_backward(rows, cols, axes, n, chunk, chunk_grads, scale, bias)


ring_softplus_sum.defvjp(_softplus_fwd, _softplus_bwd)

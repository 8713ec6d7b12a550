"""Ring reductions over all (row, column) pairs with memory O(b * chunk) per device.

Column blocks travel round the devices of `axes` with `ppermute`; each block
is scored in column chunks of at most `chunk`, so neither the b x B scores nor
a whole b x b block is ever materialised. Nothing is kept for the backward
pass but the inputs and one number per row and column: each function has a
custom VJP that sends the blocks round again, recomputes the chunks' scores and
sends the column gradients home with their block (Inf-CL style).

All run per device inside `jax.shard_map`; `rows`, `cols` and the scalars
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


def _over_ring(travelling, axes, n, carry, visit):
    """`visit(step, travelling, carry) -> (travelling, carry)` for the local block, then
    for each arriving one; returns the last (travelling, carry). What travels arrives
    from device `self - step`: after the loop it belongs to `self + 1`, one hop from home."""
    state = visit(0, travelling, carry)

    def body(step, state):
        travelling, carry = state
        return visit(step, _shift(travelling, axes, n), carry)

    return jax.lax.fori_loop(1, n, body, state)


def _slice(tree, start, size):
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size), tree)


def _update(tree, part, start):
    write = partial(jax.lax.dynamic_update_slice_in_dim, start_index=start, axis=0)
    return jax.tree.map(write, tree, part)


def _absorb(state, scores, axis: int):
    """A running (max, sum of exp) per row (axis=1) or per column (axis=0) of `scores`."""
    best, total = state
    new_best = jnp.maximum(best, scores.max(axis=axis))
    shifted = scores - jnp.expand_dims(new_best, axis)
    return new_best, total * jnp.exp(best - new_best) + jnp.exp(shifted).sum(axis=axis)


def _running_start(like):
    best = jnp.full(like.shape[:1], _FLOOR, like.dtype) + 0 * like[:, 0]  # varying like it
    return best, jnp.zeros_like(best)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def ring_lse(rows, cols, scale, exclude_diag: bool, axes: tuple[str, ...], n: int, chunk: int):
    """Both directions' log-sum-exps of `scale * rows_i . col_j` over the ring, in one pass:
    per local row over every column (`[b]`) and per local column over every row (`[b]`).

    Each chunk's scores serve both: a row's running sum stays home, a column's travels
    with its block and takes one last hop home. The softmax loss's two directions thus
    cost one pass of scores and one travelling block instead of two of each.
    """
    return _lse_forward(rows, cols, scale, exclude_diag, axes, n, chunk)


def ring_row_lse(rows, cols, scale, exclude_diag: bool, axes: tuple[str, ...], n: int, chunk: int):
    """`lse_j(scale * rows_i . col_j)` over every column of the ring: shape `[b]`."""
    return ring_lse(rows, cols, scale, exclude_diag, axes, n, chunk)[0]


def _lse_forward(rows, cols, scale, exclude_diag, axes, n, chunk):
    def visit(step, travelling, row_state):
        block, col_state = travelling

        def body(start, size, state):
            row_state, col_state = state
            _, _, scores = _chunk_scores(rows, block, scale, step, start, size, exclude_diag)
            part = _absorb(_slice(col_state, start, size), scores, axis=0)
            return _absorb(row_state, scores, axis=1), _update(col_state, part, start)

        row_state, col_state = _over_chunks(block, chunk, body, (row_state, col_state))
        return (block, col_state), row_state

    travelling = (cols, _running_start(cols))
    (_, col_state), row_state = _over_ring(travelling, axes, n, _running_start(rows), visit)
    col_best, col_total = _shift(col_state, axes, n)
    return row_state[0] + jnp.log(row_state[1]), col_best + jnp.log(col_total)


def _lse_fwd(rows, cols, scale, exclude_diag, axes, n, chunk):
    row_lse, col_lse = _lse_forward(rows, cols, scale, exclude_diag, axes, n, chunk)
    return (row_lse, col_lse), (rows, cols, scale, row_lse, col_lse)


def _lse_bwd(exclude_diag, axes, n, chunk, residuals, grads):
    rows, cols, scale, row_lse, col_lse = residuals
    row_grad, col_grad = grads

    def chunk_grads(step, block, columns, start, size):
        part, cosine, scores = _chunk_scores(rows, block, scale, step, start, size, exclude_diag)
        lse, grad = _slice(columns, start, size)
        row_weights = row_grad[:, None] * jnp.exp(scores - row_lse[:, None])
        weights = row_weights + grad[None, :] * jnp.exp(scores - lse[None, :])  # d loss/d score
        return scale * weights @ part, scale * weights.T @ rows, jnp.sum(weights * cosine)

    return _ring_backward(rows, cols, axes, n, chunk, chunk_grads, (scale,), (col_lse, col_grad))


def _ring_backward(rows, cols, axes, n, chunk, chunk_grads, scalars, columns=()):
    """Sends (block, its gradient, per-column `columns`) round the ring; returns d_rows,
    d_cols, *d_scalars. `chunk_grads(step, block, columns, start, size)` gives one
    chunk's (d_rows, d_chunk, *d_scalars)."""

    def visit(step, travelling, carry):
        block, d_block, columns = travelling

        def body(start, size, state):
            d_rows, d_block, d_scalars = state
            dr, db, *ds = chunk_grads(step, block, columns, start, size)
            d_block = _update(d_block, _slice(d_block, start, size) + db, start)
            return d_rows + dr, d_block, tuple(a + b for a, b in zip(d_scalars, ds, strict=True))

        d_rows, d_scalars = carry
        d_rows, d_block, d_scalars = _over_chunks(block, chunk, body, (d_rows, d_block, d_scalars))
        return (block, d_block, columns), (d_rows, d_scalars)

    zeros = tuple(jnp.zeros_like(s) for s in scalars)
    travelling = (cols, jnp.zeros_like(cols), columns)
    (_, d_cols, _), (d_rows, d_scalars) = _over_ring(
        travelling, axes, n, (jnp.zeros_like(rows), zeros), visit
    )
    return (d_rows, _shift(d_cols, axes, n), *d_scalars)


ring_lse.defvjp(_lse_fwd, _lse_bwd)


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

        return block, _over_chunks(block, chunk, body, total)

    return _over_ring(cols, axes, n, 0.0 * bias, visit)[1]


def _softplus_fwd(rows, cols, scale, bias, axes, n, chunk):
    return _softplus_forward(rows, cols, scale, bias, axes, n, chunk), (rows, cols, scale, bias)


def _softplus_bwd(axes, n, chunk, residuals, grad):
    rows, cols, scale, bias = residuals

    def chunk_grads(step, block, _, start, size):
        part, cosine, scores = _chunk_scores(rows, block, scale, step, start, size, False)
        weights = grad * jax.nn.sigmoid(scores + bias)
        return (
            scale * weights @ part,
            scale * weights.T @ rows,
            jnp.sum(weights * cosine),
            jnp.sum(weights),
        )

    return _ring_backward(rows, cols, axes, n, chunk, chunk_grads, (scale, bias))


ring_softplus_sum.defvjp(_softplus_fwd, _softplus_bwd)

"""Symile (Saporta et al., NeurIPS 2024) and its pairwise-CLIP baseline for 3+ modalities.

Symile scores a tuple of L2-normalised embeddings by their multilinear inner product
MIP(a, b, c) = sum_d a_d b_d c_d and trains with one softmax cross-entropy per modality
taken as the anchor (the anchor's row must pick the aligned tuple out of negatives built
from the other modalities); the paper shows this objective lower-bounds total correlation.

Negatives, for anchor x and the other modalities y, z, ... (following the reference
code, github.com/rajesh-lab/symile, `symile/loss.py`):
  "n"          O(N) per anchor row. For each non-anchor modality m draw one random
               permutation p_m of the batch; column j of the [B, B] logits is the product
               prod_m y_m[p_m(j)], shared by every row, and the diagonal is overwritten
               with the positive MIP(x_i, y_i, z_i, ...):
                 logits[i, j] = scale * MIP(x_i, y_{p_y(j)}, z_{p_z(j)})   (j != i)
                 logits[i, i] = scale * MIP(x_i, y_i, z_i)
               Fresh permutations are drawn for every anchor, as the reference draws a
               `randperm` per anchor and per non-anchor modality. (Permuting only z,
               MIP(x_i, y_j, z_{p(j)}), draws negatives from the same distribution.) An
               off-diagonal entry can by chance be an aligned tuple: a rare false negative,
               as in the paper.
  "n_squared"  every combination of the two non-anchor modalities' rows (3 modalities):
                 logits[i, j, k] = scale * MIP(x_i, y_j, z_k), positive at j = k = i,
               i.e. B^2 - 1 negatives per row and O(B^3) memory per anchor.
The loss is the mean over anchors of the mean cross-entropy over rows.

Everything is plain `jnp` on global arrays: inside `jax.jit` with embeddings
batch-sharded over `Auto` mesh axes (the project's meshes), XLA partitions it,
gathering the permuted rows or the non-anchor modalities across devices, so there
is no `shard_map` here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

MULTI_KINDS = ("symile", "pairwise")  # losses over 3 or more modalities
SYMILE_NEGATIVES = ("n", "n_squared")

NEGATIVES = ("n", "n_squared")
__all__ = [
    "NEGATIVES",
    "multilinear_inner_product",
    "pairwise_clip_loss",
    "pairwise_clip_predict",
    "symile_loss",
    "symile_permutations",
    "symile_predict",
]


def multilinear_inner_product(*embeddings: jax.Array) -> jax.Array:
    """`[B, d]` x M -> `[B]`: sum over d of the elementwise product of all the vectors."""
    if len(embeddings) < 2:
        raise ValueError(f"the MIP needs at least 2 arrays, got {len(embeddings)}")
    product = embeddings[0]
    for e in embeddings[1:]:
        product = product * e
    return product.sum(axis=-1)


def symile_permutations(rng: jax.Array, num_modalities: int, batch: int) -> jax.Array:
    """The permutations `symile_loss(negatives="n")` draws from `rng`: `int [M, M-1, B]`,
    entry `[anchor, k]` permutes the k-th non-anchor modality (in modality order)."""
    keys = jax.random.split(rng, num_modalities * (num_modalities - 1))
    perms = jax.vmap(lambda key: jax.random.permutation(key, batch))(keys)
    return perms.reshape(num_modalities, num_modalities - 1, batch)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    positive = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return _cross_entropy_with_positive(logits, positive)


def _cross_entropy_with_positive(logits: jax.Array, positive: jax.Array) -> jax.Array:
    """Like `_cross_entropy`, the positive logit given by value: its flat index in the
    `[B, B^2]` logits, `i * (B + 1)`, overflows int32 from B = 46,341."""
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)


def _logits_n(anchor: jax.Array, others: Sequence[jax.Array], perms: jax.Array) -> jax.Array:
    shuffled = others[0][perms[0]]
    for other, perm in zip(others[1:], perms[1:], strict=True):
        shuffled = shuffled * other[perm]
    logits = anchor @ shuffled.T
    positive = multilinear_inner_product(anchor, *others)
    diagonal = jnp.eye(anchor.shape[0], dtype=bool)
    return jnp.where(diagonal, positive[:, None], logits)


def _logits_n_squared(anchor: jax.Array, others: Sequence[jax.Array]) -> jax.Array:
    y, z = others
    batch = anchor.shape[0]
    return jnp.einsum("id,jd,kd->ijk", anchor, y, z).reshape(batch, batch * batch)


def _check(embeddings: Sequence[jax.Array], minimum: int, what: str) -> None:
    if len(embeddings) < minimum:
        raise ValueError(f"{what} needs at least {minimum} modalities, got {len(embeddings)}")
    shapes = {tuple(e.shape) for e in embeddings}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"{what} expects [B, d] embeddings of one shape, got {sorted(shapes)}")


def _names(names: Sequence[str] | None, count: int) -> list[str]:
    if names is None:
        return [str(m) for m in range(count)]
    if len(names) != count:
        raise ValueError(f"{len(names)} names {list(names)} for {count} modalities")
    return list(names)


def symile_loss(
    embeddings: Sequence[jax.Array],
    log_scale: jax.Array,
    *,
    negatives: str = "n",
    rng: jax.Array | None = None,
    names: Sequence[str] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symile's loss on M >= 3 L2-normalised `[B, d]` embeddings, `scale = exp(log_scale)`.

    `negatives` is "n" (needs `rng`, which drives `symile_permutations`) or "n_squared"
    (3 modalities only); see the module docstring. Returns `(loss, metrics)`, metrics
    holding each anchor's loss as `symile_loss_<name>` (names default to indices) and
    the temperature 1 / scale.
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives={negatives!r} is not one of {NEGATIVES}")
    _check(embeddings, 3, "symile_loss (2 modalities is CLIP)")
    count, batch = len(embeddings), embeddings[0].shape[0]
    if negatives == "n_squared" and count != 3:
        raise ValueError(f"negatives='n_squared' is only built for 3 modalities, got {count}")
    if negatives == "n" and rng is None:
        raise ValueError("negatives='n' draws random permutations: pass rng=")
    perms = symile_permutations(rng, count, batch) if negatives == "n" else None
    scale = jnp.exp(log_scale)
    labels = jnp.arange(batch)
    losses = []
    for m, anchor in enumerate(embeddings):
        others = [e for k, e in enumerate(embeddings) if k != m]
        if negatives == "n":
            losses.append(_cross_entropy(scale * _logits_n(anchor, others, perms[m]), labels))
        else:
            positive = scale * multilinear_inner_product(anchor, *others)
            logits = scale * _logits_n_squared(anchor, others)
            losses.append(_cross_entropy_with_positive(logits, positive))
    metrics = {
        f"symile_loss_{name}": loss for name, loss in zip(_names(names, count), losses, strict=True)
    }
    metrics["temperature"] = 1.0 / scale
    return sum(losses) / count, metrics


def symile_predict(candidates: jax.Array, *given: jax.Array) -> jax.Array:
    """Zero-shot prediction of a missing modality: `candidates [K, d]` (its embeddings),
    `given` the other modalities' `[Q, d]` embeddings; returns `[Q, K]` MIP scores."""
    if len(given) < 2:
        raise ValueError(f"symile_predict needs at least 2 given modalities, got {len(given)}")
    product = given[0]
    for g in given[1:]:
        product = product * g
    return product @ candidates.T


def _info_nce(x: jax.Array, y: jax.Array, scale: jax.Array) -> jax.Array:
    logits = scale * (x @ y.T)
    labels = jnp.arange(x.shape[0])
    return (_cross_entropy(logits, labels) + _cross_entropy(logits.T, labels)) / 2


def pairwise_clip_loss(
    embeddings: Sequence[jax.Array],
    log_scale: jax.Array,
    *,
    names: Sequence[str] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The paper's baseline: the mean over every pair of modalities (3 for 3) of
    symmetric InfoNCE with one shared `scale = exp(log_scale)`. Plain `jnp`, like
    `symile_loss`. Metrics: each pair's loss as `clip_loss_<name>_<name>`."""
    _check(embeddings, 2, "pairwise_clip_loss")
    labels = _names(names, len(embeddings))
    scale = jnp.exp(log_scale)
    metrics = {
        f"clip_loss_{labels[i]}_{labels[j]}": _info_nce(embeddings[i], embeddings[j], scale)
        for i, j in itertools.combinations(range(len(embeddings)), 2)
    }
    loss = sum(metrics.values()) / len(metrics)
    metrics["temperature"] = 1.0 / scale
    return loss, metrics


def pairwise_clip_predict(candidates: jax.Array, *given: jax.Array) -> jax.Array:
    """Zero-shot prediction under pairwise training: a candidate's score is the sum of
    its dot products with each given modality, e.g. <a, c> + <b, c> for c from (a, b),
    the sum of the pairwise CLIP logits (up to the shared scale). `[Q, K]`."""
    if not given:
        raise ValueError("pairwise_clip_predict needs at least 1 given modality")
    return sum(given[1:], given[0]) @ candidates.T

"""Softmax (InfoNCE) contrastive loss across the device mesh.

Called on global, batch-sharded embeddings; inside `jax.shard_map` each device
scores its local rows against the columns of the whole batch, so the loss and
its gradients equal the single-device full-batch loss exactly.

Strategy `gather`: all-gather embeddings over the batch axes (memory O(b*B)
per device for b local rows and a global batch of B).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

STRATEGIES = ("gather",)
KINDS = ("softmax",)


def _cross_entropy_sum(logits: jax.Array, labels: jax.Array) -> jax.Array:
    picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return jnp.sum(jax.nn.logsumexp(logits, axis=1) - picked)


def _gather_softmax(image: jax.Array, text: jax.Array, scale: jax.Array, axes: tuple[str, ...]):
    """Per-device body: local rows against gathered columns, both directions."""
    rows = image.shape[0]
    all_image = jax.lax.all_gather(image, axes, tiled=True) if axes else image
    all_text = jax.lax.all_gather(text, axes, tiled=True) if axes else text
    offset = jax.lax.axis_index(axes) * rows if axes else 0
    labels = offset + jnp.arange(rows)
    image_to_text = _cross_entropy_sum(scale * image @ all_text.T, labels)
    text_to_image = _cross_entropy_sum(scale * text @ all_image.T, labels)
    total = image_to_text + text_to_image
    positives = jnp.sum(image * text)
    if axes:
        total, positives = jax.lax.psum((total, positives), axes)
    global_batch = all_image.shape[0]
    return total / (2 * global_batch), positives / global_batch


def contrastive_loss(
    image: jax.Array,
    text: jax.Array,
    log_scale: jax.Array,
    *,
    mesh: Mesh,
    batch_axes: str | Sequence[str] | None,
    kind: str = "softmax",
    strategy: str = "gather",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric InfoNCE of L2-normalised `image` and `text` embeddings `[B, d]`.

    `log_scale` is the learned log inverse temperature. Returns the loss and
    metrics (temperature, mean positive cosine similarity).
    """
    if kind not in KINDS:
        raise ValueError(f"loss.kind={kind!r} is not supported; expected one of {KINDS}")
    if strategy not in STRATEGIES:
        raise ValueError(f"loss.strategy={strategy!r} is not supported; expected {STRATEGIES}")
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
    spec = P(axes or None, None)
    body = jax.shard_map(
        lambda i, t, s: _gather_softmax(i, t, s, axes),
        mesh=mesh,
        in_specs=(spec, spec, P()),
        out_specs=(P(), P()),
    )
    scale = jnp.exp(log_scale.astype(jnp.float32))
    loss, positive = body(image.astype(jnp.float32), text.astype(jnp.float32), scale)
    return loss, {"temperature": 1.0 / scale, "positive_similarity": positive}

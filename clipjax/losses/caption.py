"""CoCa's captioning loss: teacher-forced next-token cross-entropy over real tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def caption_loss(
    logits: jax.Array, targets: jax.Array, pad_id: int = 0
) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy of `logits [B, T, V]` against `targets [B, T]` over the
    positions whose target is not `pad_id`, in float32; and that number of positions.

    A batch with no real target gives a loss of 0 (not NaN).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits of shape {logits.shape} do not match targets of shape {targets.shape}; "
            "expected logits [B, T, vocab] and targets [B, T]"
        )
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    real = (targets != pad_id).astype(jnp.float32)
    count = real.sum()
    loss = -(picked * real).sum() / jnp.maximum(count, 1.0)
    return loss, count

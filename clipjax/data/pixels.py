"""uint8 pixels to the model's float input, on the device: shared by the train step
and the eval encoders."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def pixel_normalizer(mean: Sequence[float], std: Sequence[float]) -> Callable:
    """uint8 pixels -> float32 `(x/255 - mean) / std`, inside the jitted step: the loader
    ships a quarter of the bytes and the host does no float work. Floats pass through."""
    shift = jnp.asarray(mean, jnp.float32) * 255.0
    scale = 1.0 / (jnp.asarray(std, jnp.float32) * 255.0)

    def normalize(images: jax.Array) -> jax.Array:
        if images.dtype != jnp.uint8:
            return images
        return (images.astype(jnp.float32) - shift) * scale

    return normalize

"""Embedding a whole evaluation array on all devices and hosts, padded so that
no example is dropped or counted twice."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils


def embed_all(
    encode: Callable[[jax.Array], jax.Array],
    data: np.ndarray,
    global_batch: int,
    sharding_for: Callable,
) -> np.ndarray:
    """Applies `encode` to `data` (identical on every process) in global batches.

    Each device is handed the rows its shard of the batch covers, wherever the mesh
    puts it (device order need not follow process order; axes that replicate the
    batch get the same rows). The last batch is padded by repeating the final
    example, and the padded rows are cut from the result.
    """
    count = len(data)
    sharding = sharding_for(data.ndim)
    outputs = []
    for start in range(0, count, global_batch):
        batch = data[start : start + global_batch]
        if len(batch) < global_batch:
            pad = np.repeat(batch[-1:], global_batch - len(batch), axis=0)
            batch = np.concatenate([batch, pad])
        array = jax.make_array_from_callback(
            batch.shape, sharding, lambda index, rows=batch: rows[index]
        )
        out = encode(array)
        outputs.append(np.asarray(multihost_utils.process_allgather(out, tiled=True)))
    return np.concatenate(outputs)[:count]

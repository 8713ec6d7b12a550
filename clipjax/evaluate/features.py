"""Embedding a whole evaluation array on all devices and hosts, padded so that
no example is dropped or counted twice."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from clipjax.data.loader import to_global


def embed_all(
    encode: Callable[[jax.Array], jax.Array],
    data: np.ndarray,
    global_batch: int,
    sharding_for: Callable,
) -> np.ndarray:
    """Applies `encode` to `data` (identical on every process) in global batches.

    The last batch is padded by repeating the final example; padded rows are
    cut from the result. Each process feeds its own slice of every batch.
    """
    count = len(data)
    processes, index = jax.process_count(), jax.process_index()
    if global_batch % processes:
        raise ValueError(f"eval batch {global_batch} does not divide over {processes} processes")
    local = global_batch // processes
    padded = -(-count // global_batch) * global_batch
    data = np.concatenate([data, np.repeat(data[-1:], padded - count, axis=0)])
    outputs = []
    for start in range(0, padded, global_batch):
        chunk = data[start + index * local : start + (index + 1) * local]
        out = encode(to_global({"x": chunk}, sharding_for)["x"])
        outputs.append(np.asarray(multihost_utils.process_allgather(out, tiled=True)))
    return np.concatenate(outputs)[:count]

"""Embedding a whole evaluation array, or a set streamed in batches, on all devices
and hosts, padded so that no example is dropped or counted twice."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

from clipjax.evaluate.sources.streamed import LocalBatch


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


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (every process must call this)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.asarray(multihost_utils.process_allgather(np.asarray(flag))).any())


def allgather_objects(value) -> list:
    """`value` of every process, in process order (pickled; every process calls this)."""
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(pickle.dumps(value), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([len(data)]))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(data)] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [pickle.loads(gathered[i, : sizes[i]].tobytes()) for i in range(len(sizes))]


def embed_stream(
    encode: Callable[[jax.Array], jax.Array],
    batches: Iterable[LocalBatch],
    global_batch: int,
    crop_shape: tuple[int, ...],
    sharding_for: Callable,
) -> tuple[np.ndarray, list]:
    """Applies `encode` to a set streamed as each process's `LocalBatch`es: every
    process contributes its rows to each global batch (padding rows, marked by position
    -1, where it has fewer or none left) until no process has any. Returns the
    embeddings and targets of every process's samples, in the set's order, on every
    process; host memory holds one batch of crops and the embeddings."""
    local_rows = global_batch // jax.process_count()
    iterator = iter(batches)
    embeddings, positions, targets = [], [], {}
    while True:
        local = next(iterator, None)
        if not any_process(local is not None):
            break
        crops = np.zeros((local_rows, *crop_shape), np.uint8)
        where = np.full(local_rows, -1, np.int64)
        if local is not None:
            crops[: len(local.crops)] = local.crops
            where[: len(local.positions)] = local.positions
            targets.update(zip(local.positions.tolist(), local.targets, strict=True))
        images = jax.make_array_from_process_local_data(sharding_for(crops.ndim), crops)
        rows = jax.make_array_from_process_local_data(sharding_for(1), where)
        out = np.asarray(multihost_utils.process_allgather(encode(images), tiled=True))
        at = np.asarray(multihost_utils.process_allgather(rows, tiled=True))
        embeddings.append(out[at >= 0])
        positions.append(at[at >= 0])
    for other in allgather_objects(targets):
        targets.update(other)
    if not positions:
        return np.zeros((0, 0), np.float32), []
    every = np.concatenate(positions)
    order = np.argsort(every, kind="stable")
    return np.concatenate(embeddings)[order], [targets[int(p)] for p in every[order]]

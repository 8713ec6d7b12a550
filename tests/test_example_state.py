"""The per-example table: a step reads and writes its batch's rows by example number on
8 devices exactly as numpy indexing does, duplicates resolved to the last occurrence."""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.parallel import build_mesh
from clipjax.train.example_state import ExampleTable


def test_lookup_and_store_equal_numpy_indexing_with_duplicates():
    mesh = build_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    axes = ("data", "fsdp")
    table = ExampleTable.create(37, {"a": 1.0, "b": -2.0}, mesh, axes)
    assert table.size == 4096  # the same on every mesh: a checkpoint restores onto any
    rng = np.random.default_rng(0)
    values = {n: rng.normal(size=4096).astype(np.float32) for n in ("a", "b")}
    placed = {n: jax.device_put(v, table.sharding) for n, v in values.items()}
    index = np.array([3, 4095, 0, 17, 17, 517, 36, 3, 2222, 9, 31, 17, 8, 1, 3030, 12], np.int32)
    on_rows = NamedSharding(mesh, P(axes))
    rows = jax.jit(table.lookup)(placed, jax.device_put(index, on_rows))
    for n in values:
        np.testing.assert_array_equal(rows[n], values[n][index])

    new = {n: rng.normal(size=16).astype(np.float32) for n in values}
    stored = jax.jit(table.store)(
        placed,
        jax.device_put(index, on_rows),
        {n: jax.device_put(v, on_rows) for n, v in new.items()},
    )
    for n in values:
        want = values[n].copy()
        for position, example in enumerate(index):  # in order: the last occurrence wins
            want[example] = new[n][position]
        np.testing.assert_array_equal(stored[n], want)
        assert stored[n].sharding.is_equivalent_to(table.sharding, 1)


def test_init_fills_every_field():
    mesh = build_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    table = ExampleTable.create(5, {"tau": 0.01}, mesh, "data")
    np.testing.assert_array_equal(
        jax.jit(table.init, out_shardings={"tau": table.sharding})()["tau"],
        np.full(4096, 0.01, np.float32),
    )

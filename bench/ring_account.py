"""The ring loss's per-chip temporaries at global batch 4,194,304 on 8 v5p chips, from the
TPU compiler, for several `ring_chunk` and embedding sizes (to separate its terms).

    uv sync --extra tpu-aot
    uv run python bench/ring_account.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = [(512, 256), (512, 1024), (512, 4096), (256, 1024)]  # (d, ring_chunk)


def main() -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from clipjax.aot.topology import parse_topology
    from clipjax.losses import LossSpec, contrastive_loss
    from clipjax.parallel import build_mesh

    mesh = build_mesh(
        {"data": -1, "fsdp": 1, "tensor": 1}, parse_topology("v5p-16").devices(), True
    )
    batch = 4_194_304
    print("| d | ring_chunk | forward temporaries | forward + backward temporaries |")
    print("|---:|---:|---:|---:|")
    for dim, chunk in CASES:
        emb = jax.ShapeDtypeStruct(
            (batch, dim), jnp.float32, sharding=NamedSharding(mesh, P("data"))
        )
        scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
        spec = LossSpec(strategy="ring", ring_chunk=chunk)

        def loss(x, y, s, spec=spec):
            return contrastive_loss(x, y, s, mesh=mesh, batch_axes="data", spec=spec)[0]

        temps = []
        for fn in (jax.jit(loss), jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))):
            compiled = fn.trace(emb, emb, scale).lower(lowering_platforms=("tpu",)).compile()
            temps.append(compiled.memory_analysis().temp_size_in_bytes / 2**30)
        print(f"| {dim} | {chunk:,} | {temps[0]:.2f} GiB | {temps[1]:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()

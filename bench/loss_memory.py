"""Temporary memory and time of the contrastive loss's forward+backward, per strategy.

    uv run python bench/loss_memory.py [--batches 8192 32768 131072] [--dim 512]

Runs on 8 simulated CPU devices (or the real devices with --real-devices).
Memory is XLA's compiled memory analysis of one device's program (temporary
buffers, excluding inputs and outputs); time is the median of repeated calls,
measured only where every strategy's buffers fit in host memory. Prints a
Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kind", default="softmax", choices=["softmax", "sigmoid"])
    parser.add_argument("--group-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--time-limit-gb",
        type=float,
        default=12.0,
        help="time a batch size only if all devices' buffers total less",
    )
    parser.add_argument("--real-devices", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not args.real_devices:
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from clipjax.losses import LossSpec, contrastive_loss
    from clipjax.parallel import build_mesh

    mesh = build_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    devices = mesh.size
    strategies = [
        ("gather", devices),
        (f"grouped(g={args.group_size})", args.group_size),
        ("ring", devices),
    ]
    print(
        f"device: {jax.devices()[0].device_kind} x {devices}, jax {jax.__version__}, "
        f"kind={args.kind}, d={args.dim}\n"
    )
    print("| global batch | strategy | temp memory / device | time / call (ms) | vs gather |")
    print("|---:|---|---:|---:|---:|")
    for batch in args.batches:
        rows = NamedSharding(mesh, P("data", None))
        shape = jax.ShapeDtypeStruct((batch, args.dim), jnp.float32, sharding=rows)
        scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
        compiled, memory = {}, {}
        for name, group in strategies:
            spec = LossSpec(kind=args.kind, strategy=name.split("(")[0], group_size=group)

            def loss(x, y, s, b, spec=spec):
                return contrastive_loss(
                    x, y, s, b, mesh=mesh, batch_axes="data", spec=spec, metrics=False
                )[0]

            fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
            compiled[name] = fn.lower(shape, shape, scalar, scalar).compile()
            memory[name] = compiled[name].memory_analysis().temp_size_in_bytes
        times = {}
        if max(memory.values()) * devices < args.time_limit_gb * 2**30:
            key = jax.random.key(0)
            x = jax.device_put(jax.random.normal(key, (batch, args.dim)), rows)
            x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
            inputs = (x, x[::-1], jnp.float32(2.6), jnp.float32(-10.0))
            for name in compiled:
                jax.block_until_ready(compiled[name](*inputs))
            for _ in range(args.repeats):  # alternate strategies, one call each per round
                for name in compiled:
                    start = time.perf_counter()
                    jax.block_until_ready(compiled[name](*inputs))
                    times.setdefault(name, []).append(time.perf_counter() - start)
        for name in compiled:
            mem = memory[name] / 2**20
            ratio_mem = memory["gather"] / max(memory[name], 1)  # gather's memory / this one's
            if times:
                t = statistics.median(times[name]) * 1e3
                ratio_t = t / (statistics.median(times["gather"]) * 1e3)
                timing = f"{t:,.1f} | {ratio_t:.2f}x time, {ratio_mem:.1f}x less memory"
            else:
                timing = (
                    f"not run (buffers > {args.time_limit_gb:g} GiB) | {ratio_mem:.1f}x less memory"
                )
            print(f"| {batch:,} | {name} | {mem:,.1f} MiB | {timing} |", flush=True)


if __name__ == "__main__":
    main()

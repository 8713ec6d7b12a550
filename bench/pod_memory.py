"""Per-chip HBM of pod-scale runs, from the real TPU compiler on this machine (no TPU).

    uv sync --extra tpu-aot
    uv run python bench/pod_memory.py --records l14-1m-v5p128 l14-4m-v5p16-host
    uv run python bench/pod_memory.py --loss-only --topologies v5p-16 v5p-128
    uv run python bench/pod_memory.py --compile-time vit_b16 vit_l14
    uv run python bench/pod_memory.py --grid

Each record is `clipjax compile` on a config (the same step `clipjax train` runs);
`--loss-only` compiles the contrastive loss's forward and backward alone (d=512,
fp32) for each strategy; `--grid` compiles CLIP ViT-B/16 and ViT-L/14 at global batch
32,768 on 256-chip slices, data vs fsdp sharding, gather vs ring, and finds the largest
power-of-two batch of each. Prints Markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name: (config, topology, overrides); all fp32, scanned blocks, full remat
LARGE = ["model.scan_layers=True", "model.remat='full'", "loss.strategy='ring'"]
RECORDS = {
    "l14-1m-v5p128": ("configs/clip/vit_l14.py", "v5p-128",
                      ["train.batch_size=1048576", "train.accum_steps=32", *LARGE]),
    "b16-1m-v5p128": ("configs/clip/vit_b16.py", "v5p-128",
                      ["train.batch_size=1048576", "train.accum_steps=32", *LARGE]),
    "l14-4m-v5p16": ("configs/clip/vit_l14.py", "v5p-16",
                    ["train.batch_size=4194304", "train.accum_steps=1024", *LARGE]),
    "l14-4m-v5p16-host": ("configs/clip/vit_l14.py", "v5p-16",
                         ["train.batch_size=4194304", "train.accum_steps=1024",
                          "train.host_batch=True", *LARGE]),
    "b16-4m-v5p16-host": ("configs/clip/vit_b16.py", "v5p-16",
                         ["train.batch_size=4194304", "train.accum_steps=1024",
                          "train.host_batch=True", *LARGE]),
}  # fmt: skip


def gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:,.2f}"


def run_records(names: list[str]) -> None:
    from clipjax.aot.compile import compile_for_topology
    from clipjax.aot.topology import parse_topology
    from clipjax.config import apply_overrides, load_config

    print("| record | chips | batch | state | batch (HBM) | temporaries | total / HBM (GiB) "
          "| host | fits | compile s | roofline s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for name in names:
        path, topology, overrides = RECORDS[name]
        config = load_config(path)
        apply_overrides(config, overrides)
        r = compile_for_topology(config, parse_topology(topology))
        m = r.memory
        total = gib(r.requested_bytes if r.requested_bytes is not None else r.total_bytes)
        host = m.get("host_arguments", 0) + m.get("host_temporaries", 0) if m else None
        roofline = r.roofline_seconds()
        print(
            f"| {name} ({topology}) | {r.chips} | {r.global_batch:,} | {gib(m.get('state'))} "
            f"| {gib(m.get('batch'))} | {gib(m.get('temporaries'))} "
            f"| {total} / {gib(r.hbm_bytes)} | {gib(host)} | {'yes' if r.fits else 'NO'} "
            f"| {r.compile_seconds:.0f} | {roofline or 0:.2f} |",
            flush=True,
        )
        if r.compiler_message:
            print(f"|   compiler: {r.compiler_message} |", flush=True)


def largest_batch(model: str, topology: str, micro: int, low: int, high: int) -> None:
    """Binary search over powers of two for the largest global batch whose step fits,
    with ring, scanned blocks, full remat, host-memory pixels and `micro` rows per chip
    per micro-batch."""
    from clipjax.aot.compile import compile_for_topology
    from clipjax.aot.topology import parse_topology
    from clipjax.config import apply_overrides, load_config

    slice_ = parse_topology(topology)
    best = None
    while low <= high:
        exponent = (low + high) // 2
        batch = 2**exponent
        config = load_config(f"configs/clip/{model}.py")
        accum = max(2, batch // (slice_.chips * micro))
        apply_overrides(config, [f"train.batch_size={batch}", f"train.accum_steps={accum}",
                                 "train.host_batch=True", *LARGE])  # fmt: skip
        r = compile_for_topology(config, slice_)
        used = r.requested_bytes if r.requested_bytes is not None else r.total_bytes
        print(f"|   {model} {topology} {batch:,}: {gib(used)} GiB, fits={r.fits}", flush=True)
        if r.fits:
            best, low = r, exponent + 1
        else:
            high = exponent - 1
    if best is None:
        print(f"| {model} | {topology} | none from 2^{low} | | | |", flush=True)
        return
    m = best.memory
    host = (m["host_arguments"] + m["host_temporaries"]) * best.chips / best.hosts
    print(
        f"| {model} | {topology} ({best.chips} chips) | {best.global_batch:,} | {micro} "
        f"| {gib(m['state'])} + {gib(m['temporaries'])} = {gib(best.total_bytes)} "
        f"/ {gib(best.hbm_bytes)} | {gib(host)} |",
        flush=True,
    )


GRID_MODELS = ("vit_b16", "vit_l14")
GRID_TOPOLOGIES = ("v4-256", "v5p-256", "v5e-256")
SHARDINGS = {"data": ["mesh.data=-1", "mesh.fsdp=1"], "fsdp": ["mesh.data=1", "mesh.fsdp=-1"]}
GRID = ["model.scan_layers=True", "model.remat='full'"]  # fp32, no accumulation


def compile_grid_point(model: str, topology: str, sharding: str, strategy: str, batch: int):
    from clipjax.aot.compile import compile_for_topology
    from clipjax.aot.topology import parse_topology
    from clipjax.config import apply_overrides, load_config

    config = load_config(f"configs/clip/{model}.py")
    apply_overrides(config, [f"train.batch_size={batch}", f"loss.strategy={strategy!r}",
                             *SHARDINGS[sharding], *GRID])  # fmt: skip
    return compile_for_topology(config, parse_topology(topology))


def needed_bytes(report) -> int:
    return report.requested_bytes if report.requested_bytes is not None else report.total_bytes


def largest_power_of_two(first, batch: int, compile_at) -> tuple[int | None, object]:
    """The largest power-of-two global batch that fits, from `first` (the report at
    `batch`): guess from memory affine in the batch above the state, then step by
    factors of two until one fits and its double does not."""
    fixed = first.memory.get("state", 0) if first.memory else 0
    slope = max(needed_bytes(first) - fixed, 1) / batch
    exponent = max(int(math.log2(max((first.hbm_bytes - fixed) / slope, 1))), 0)
    low = int(math.log2(first.chips))
    exponent = min(max(exponent, low), 24)
    reports = {int(math.log2(batch)): first}

    def at(e):
        if e not in reports:
            reports[e] = compile_at(2**e)
        return reports[e]

    while exponent > low and not at(exponent).fits:
        exponent -= 1
    if not at(exponent).fits:
        return None, None
    while exponent < 24 and at(exponent + 1).fits:
        exponent += 1
    return 2**exponent, at(exponent)


def run_grid(batch: int, only: list[str], largest_for: list[str], skip: int) -> None:
    """Each row: model, topology, sharding, strategy at `batch`; `only` limits it to some
    MODEL:TOPOLOGY pairs, `largest_for` to some SHARDING:STRATEGY pairs the search for the
    largest batch (the rest print "-"), and `skip` leaves out the first rows."""
    print(
        "| model | topology | sharding | strategy | state | temporaries | total / HBM (GiB) "
        "| fits | largest power-of-two batch (total GiB) |"
    )
    print("|---|---|---|---|---:|---:|---:|---|---:|")
    rows = [
        (model, topology, sharding, strategy)
        for model in GRID_MODELS
        for topology in GRID_TOPOLOGIES
        if not only or f"{model}:{topology}" in only
        for sharding in SHARDINGS
        for strategy in ("gather", "ring")
    ]
    for model, topology, sharding, strategy in rows[skip:]:
        at = partial(compile_grid_point, model, topology, sharding, strategy)
        r = at(batch)
        m = r.memory or {}
        most = "-"
        if not largest_for or f"{sharding}:{strategy}" in largest_for:
            largest, best = largest_power_of_two(r, batch, at)
            most = "none" if largest is None else f"{largest:,} ({gib(best.total_bytes)})"
        print(
            f"| {model} | {topology} ({r.chips} chips) | {sharding} | {strategy} "
            f"| {gib(m.get('state'))} | {gib(m.get('temporaries'))} "
            f"| {gib(needed_bytes(r))} / {gib(r.hbm_bytes)} "
            f"| {'yes' if r.fits else 'NO'} | {most} |",
            flush=True,
        )


def compile_times(models: list[str], topology: str, batch: int) -> None:
    """The TPU compiler's time for the train step with unrolled vs scanned blocks."""
    from clipjax.aot.compile import compile_for_topology
    from clipjax.aot.topology import parse_topology
    from clipjax.config import apply_overrides, load_config

    print("| model | topology | unrolled (s) | scanned (s) | unrolled / scanned |")
    print("|---|---|---:|---:|---:|")
    for model in models:
        seconds = {}
        for scan in (False, True):
            config = load_config(f"configs/clip/{model}.py")
            apply_overrides(config, [f"train.batch_size={batch}", f"model.scan_layers={scan}"])
            seconds[scan] = compile_for_topology(config, parse_topology(topology)).compile_seconds
        print(
            f"| {model} | {topology}, batch {batch:,} | {seconds[False]:.1f} | {seconds[True]:.1f} "
            f"| {seconds[False] / seconds[True]:.2f}x |",
            flush=True,
        )


def run_loss_only(batches: list[int], topologies: list[str], dim: int) -> None:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from clipjax.aot.compile import requested_bytes
    from clipjax.aot.topology import parse_topology
    from clipjax.losses import LossSpec, contrastive_loss
    from clipjax.parallel import build_mesh

    print("| global batch | chips | strategy | temporaries / chip | fits |")
    print("|---:|---:|---|---:|---|")
    for topology_name in topologies:
        topology = parse_topology(topology_name)
        mesh = build_mesh({"data": -1, "fsdp": 1, "tensor": 1}, topology.devices(), True)
        for batch in batches:
            rows = NamedSharding(mesh, P("data", None))
            emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=rows)
            scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
            for strategy, group in (("gather", 1), ("grouped", 4), ("ring", 1)):
                spec = LossSpec(strategy=strategy, group_size=group)

                def loss(x, y, s, spec=spec, mesh=mesh):
                    return contrastive_loss(x, y, s, mesh=mesh, batch_axes="data", spec=spec)[0]

                fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
                lowered = fn.trace(emb, emb, scalar).lower(lowering_platforms=("tpu",))
                try:
                    temp = lowered.compile().memory_analysis().temp_size_in_bytes
                    fits = temp <= topology.chip.hbm_bytes
                except jax.errors.JaxRuntimeError as exc:
                    temp, fits = requested_bytes(str(exc)), False
                name = f"grouped (g={group})" if strategy == "grouped" else strategy
                print(
                    f"| {batch:,} | {mesh.size} ({topology_name}) | {name} "
                    f"| {gib(temp)} GiB | {'yes' if fits else 'NO'} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", nargs="+", default=[], choices=sorted(RECORDS))
    parser.add_argument("--loss-only", action="store_true")
    parser.add_argument("--batches", type=int, nargs="+", default=[1_048_576, 4_194_304])
    parser.add_argument("--topologies", nargs="+", default=["v5p-16", "v5p-128"])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--largest",
        nargs="+",
        default=[],
        metavar="MODEL:TOPOLOGY",
        help="e.g. vit_l14:v5p-8: the largest power-of-two batch that fits",
    )
    parser.add_argument("--micro", type=int, default=128, help="rows per chip per micro-batch")
    parser.add_argument("--exponents", type=int, nargs=2, default=[14, 24])
    parser.add_argument("--compile-time", nargs="+", default=[], metavar="MODEL")
    parser.add_argument("--grid", action="store_true", help="CLIP B/16, L/14 on 256-chip slices")
    parser.add_argument("--grid-batch", type=int, default=32_768)
    parser.add_argument("--grid-only", nargs="+", default=[], metavar="MODEL:TOPOLOGY")
    parser.add_argument("--grid-largest-for", nargs="+", default=[], metavar="SHARDING:STRATEGY")
    parser.add_argument("--grid-skip", type=int, default=0, help="leave out the first rows")
    parser.add_argument("--compile-topology", default="v5p-8")
    parser.add_argument("--compile-batch", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    print(f"jax {jax.__version__}, TPU compiler: libtpu, deviceless on this machine\n")
    if args.records:
        run_records(args.records)
    if args.largest:
        print(
            "| model | topology | largest batch | micro-batch / chip | HBM / chip: state + "
            "temporaries = total / capacity (GiB) | host memory / host (GiB) |"
        )
        print("|---|---|---:|---:|---|---:|")
        for item in args.largest:
            model, topology = item.split(":")
            largest_batch(model, topology, args.micro, *args.exponents)
    if args.grid:
        run_grid(args.grid_batch, args.grid_only, args.grid_largest_for, args.grid_skip)
    if args.compile_time:
        compile_times(args.compile_time, args.compile_topology, args.compile_batch)
    if args.loss_only:
        run_loss_only(args.batches, args.topologies, args.dim)


if __name__ == "__main__":
    main()

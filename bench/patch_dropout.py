"""FLIP's patch masking (`model.image.patch_dropout`): train-step throughput at 0.5 vs 0,
side by side in one run, and the compiled FLOPs per chip from the TPU compiler.

    uv run python bench/patch_dropout.py                  # CPU: ViT-S/16-like, 224 px
    uv run --extra tpu-aot python bench/patch_dropout.py --tpu v5p-8   # + TPU FLOPs

The CPU part times the trainer's own step (`bench/common.py`) for each setting,
alternating the settings in every repeat so both see the same machine state, and
prints images/s and their ratio. `--tpu` also compiles CLIP ViT-B/16 at 224 px in
bfloat16 for that slice with each setting and prints the compiler's FLOPs per chip
next to the architecture's count (`clipjax/flops.py`).
"""

from __future__ import annotations

import argparse
import statistics

from common import bench_config, clipjax_step, time_steps


def cpu_rates(args) -> dict[float, float]:
    import jax

    steps = {}
    for dropout in args.dropouts:
        config = bench_config(args.size, args.image_size)
        with config.unlocked():
            config.model.image.patch_dropout = dropout
        steps[dropout] = list(clipjax_step(config, args.batch))
    seconds = {dropout: [] for dropout in args.dropouts}
    for _ in range(args.repeats):
        for dropout, (step, state, batch) in steps.items():
            per_step, state = time_steps(step, state, batch, args.steps)
            steps[dropout][1] = state
            seconds[dropout].append(per_step)
    print(f"{len(jax.devices())} x {jax.devices()[0].device_kind}, jax {jax.__version__}")
    for dropout, values in seconds.items():
        print(f"patch_dropout={dropout}: step times (s) " + ", ".join(f"{s:.3f}" for s in values))
    return {d: args.batch / statistics.median(values) for d, values in seconds.items()}


def tpu_flops(topology_name: str, dropouts, batch: int) -> dict[float, tuple[float, float]]:
    from clipjax.aot.libtpu_env import quiet_libtpu

    quiet_libtpu()  # before the TPU backend loads: libtpu here compiles, no chip attached
    from clipjax.aot.compile import compile_for_topology
    from clipjax.aot.topology import parse_topology

    topology = parse_topology(topology_name)
    flops = {}
    for dropout in dropouts:
        config = bench_config("vit_b16", 224, "bfloat16")
        with config.unlocked():
            config.model.image.patch_dropout = dropout
            config.train.batch_size = batch
        report = compile_for_topology(config, topology)
        flops[dropout] = (report.compiled_flops or 0.0, report.model_flops or 0.0)
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="vit_s16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dropouts", type=float, nargs=2, default=(0.0, 0.5))
    parser.add_argument("--tpu", default="", help="also compile for this slice, e.g. v5p-8")
    parser.add_argument("--tpu-batch", type=int, default=1024)
    args = parser.parse_args()

    base, masked = args.dropouts
    rates = cpu_rates(args)
    print(f"\n| {args.size}, {args.image_size} px, batch {args.batch} | images/s |")
    print("|---|---:|")
    for dropout, rate in rates.items():
        print(f"| patch_dropout={dropout} | {rate:,.2f} |")
    print(f"| ratio | **{rates[masked] / rates[base]:.2f}x** |")
    if args.tpu:
        flops = tpu_flops(args.tpu, args.dropouts, args.tpu_batch)
        print(
            f"\n| ViT-B/16 on {args.tpu}, batch {args.tpu_batch} | compiled TFLOP per chip "
            "| model TFLOP per chip |"
        )
        print("|---|---:|---:|")
        for dropout, (compiled, model) in flops.items():
            print(f"| patch_dropout={dropout} | {compiled / 1e12:,.2f} | {model / 1e12:,.2f} |")
        (c0, m0), (c1, m1) = flops[base], flops[masked]
        print(f"| ratio | {c0 / c1:.2f}x | {m0 / m1:.2f}x |")


if __name__ == "__main__":
    main()

"""Training throughput and model FLOPs utilisation (MFU) of the full clipjax train step.

    uv run python bench/train_step.py                       # CPU: ViT-S/16-like, 64 px, batch 128
    uv run python bench/train_step.py --size vit_b16 --image-size 224 \
        --dtype bfloat16 --batch max                         # GPU: largest batch that fits

The step is the trainer's own (forward, softmax loss, backward, AdamW, log-scale
clamp) on synthetic batches already on the devices, data-parallel over all local
devices. Model FLOPs come from the architecture (`clipjax/flops.py` documents
the formula); the peak from `--peak-tflops`, a data-sheet table for GPUs/TPUs,
or an estimate from /proc/cpuinfo on CPUs. Prints a Markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics

from common import bench_config, clipjax_step, time_steps


def is_out_of_memory(exc: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(exc) or "Out of memory" in str(exc)


def largest_batch(config, start: int, limit: int) -> int:
    """Doubles the batch from `start` until a step runs out of memory."""
    import jax

    fits, batch = 0, start
    while batch <= limit:
        try:
            step, state, data = clipjax_step(config, batch)
            time_steps(step, state, data, steps=1, warmup=1)
            fits = batch
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            break
        finally:
            jax.clear_caches()
        batch *= 2
    if not fits:
        raise SystemExit(f"batch {start} does not fit on this device")
    return fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="vit_s16", help="vit_s16 | vit_b32 | vit_b16 | vit_l14")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", default="128", help="global batch, or 'max'")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    parser.add_argument("--scan", action="store_true", help="model.scan_layers=True")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="per device")
    args = parser.parse_args()

    import jax

    from clipjax.flops import Peak, device_peak, train_flops_per_example

    config = bench_config(args.size, args.image_size, args.dtype, args.remat, args.scan)
    batch = largest_batch(config, 64, 1 << 16) if args.batch == "max" else int(args.batch)
    step, state, data = clipjax_step(config, batch)
    seconds = []
    for _ in range(args.repeats):
        per_step, state = time_steps(step, state, data, args.steps)
        seconds.append(per_step)
    per_step = statistics.median(seconds)

    devices = jax.devices()
    if args.peak_tflops:
        peak = Peak(args.peak_tflops * 1e12, "given")
    else:
        peak = device_peak(devices[0], args.dtype)
    flops = train_flops_per_example(config.model, batch) * batch
    achieved = flops / per_step
    mfu = achieved / (peak.flops_per_s * len(devices))
    print(
        f"{len(devices)} x {devices[0].device_kind}, jax {jax.__version__}, "
        f"scan_layers={args.scan}, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}"
    )
    print(f"peak per device: {peak.flops_per_s / 1e12:.3f} TFLOP/s ({peak.source})")
    print(
        f"model FLOPs per step: {flops / 1e12:.3f} TFLOP; step times (s): "
        + ", ".join(f"{s:.3f}" for s in seconds)
    )
    print("\n| model | image px | batch | dtype | step (s) | images/s | TFLOP/s | MFU |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    print(
        f"| {args.size} | {args.image_size} | {batch} | {args.dtype} | {per_step:.3f} "
        f"| {batch / per_step:,.1f} | {achieved / 1e12:.3f} | {100 * mfu:.1f}% |"
    )


if __name__ == "__main__":
    main()

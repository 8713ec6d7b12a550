"""Compile time of the full train step, scanned vs unrolled transformer blocks.

    uv run python bench/compile_time.py [--size vit_b16] [--batch 8] [--repeats 1]

Builds OpenAI's CLIP size (image and text towers, 12 layers each for ViT-B/16),
AdamW, the softmax loss, and times `jit(step).lower(...)` and `.compile()` on
one device for `model.scan_layers` False and True, alternating. Prints a
Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="vit_b16", choices=["vit_b32", "vit_b16", "vit_l14"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from clipjax.config import load_config
    from clipjax.parallel import batch_sharding, build_mesh, rules_table
    from clipjax.train.objective import objective_from_config
    from clipjax.train.optim import build_optimizer, learning_rate_schedule
    from clipjax.train.state import create_train_state
    from clipjax.train.step import make_grad_fn, make_train_step

    config = load_config(f"configs/clip/{args.size}.py")
    mesh = build_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    rules = rules_table(config.sharding_rules)
    size = config.model.image.image_size
    shardings = {"image": batch_sharding(mesh, rules, 4), "text": batch_sharding(mesh, rules, 2)}
    batch = {
        "image": jax.ShapeDtypeStruct(
            (args.batch, size, size, 3), jnp.float32, sharding=shardings["image"]
        ),
        "text": jax.ShapeDtypeStruct((args.batch, 77), jnp.int32, sharding=shardings["text"]),
    }
    tx = build_optimizer(config.optim, 1000)
    schedule = learning_rate_schedule(config.optim, 1000)
    steps = {}
    for scan in (False, True):
        config.model.scan_layers = scan
        spec, state, state_sh = create_train_state(config.model, 0, tx, mesh, rules)
        objective = objective_from_config(config, mesh, rules.get("batch"))
        grad_fn = make_grad_fn(spec, objective, mesh, rules.get("batch"))
        steps[scan] = (make_train_step(grad_fn, tx, state_sh, shardings, schedule), state)
    results = {False: [], True: []}
    for _ in range(args.repeats):
        for scan, (step, state) in steps.items():
            jax.clear_caches()
            start = time.perf_counter()
            lowered = step.lower(state, batch)
            lowered_at = time.perf_counter()
            lowered.compile()
            results[scan].append((lowered_at - start, time.perf_counter() - lowered_at))
    print(
        f"{args.size}, batch {args.batch}, {jax.devices()[0].device_kind}, jax {jax.__version__}\n"
    )
    print("| blocks | lower (s) | compile (s) | total (s) |")
    print("|---|---:|---:|---:|")
    totals = {}
    for scan, runs in results.items():
        lower = statistics.median(r[0] for r in runs)
        compile_ = statistics.median(r[1] for r in runs)
        totals[scan] = lower + compile_
        name = "scanned" if scan else "unrolled"
        print(f"| {name} | {lower:.1f} | {compile_:.1f} | {totals[scan]:.1f} |")
    print(f"\nscanned compiles {totals[False] / totals[True]:.1f}x faster than unrolled")


if __name__ == "__main__":
    main()

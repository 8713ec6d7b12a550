"""One clipjax training measurement, the counterpart of bench/open_clip_step.py; run by
bench/vs_open_clip.py in the project's environment. Prints one JSON line."""

from __future__ import annotations

import argparse
import json

from common import bench_config, clipjax_step, time_steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="vit_s16")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--print-arch", action="store_true", help="print the towers as JSON")
    args = parser.parse_args()

    config = bench_config(args.size, args.image_size)
    if args.print_arch:
        print(json.dumps(config.model.to_dict()))
        return
    import jax

    step, state, batch = clipjax_step(config, args.batch)
    per_step, _ = time_steps(step, state, batch, args.steps, args.warmup)
    print(json.dumps({"seconds_per_step": per_step, "jax": jax.__version__}))


if __name__ == "__main__":
    main()

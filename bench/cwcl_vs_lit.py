"""CWCL vs LiT's one-hot InfoNCE, both transferring to a text tower against the same
locked image tower, by the project's trainer.

    uv run python bench/cwcl_vs_lit.py [--seeds 0 1 2] [--image-steps 1000] [--steps 300]

First trains the embedded default (a small CLIP on the digits) for `--image-steps`
and keeps its image tower. Then, per seed, trains a fresh text tower against that
locked tower (`model.frozen=("image",)`) for `--steps` with `loss.kind="softmax"`
(LiT) and with `loss.kind="cwcl"` (weights from the locked image tower), and reports
the held-out zero-shot accuracy and retrieval of each. Prints a Markdown table for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METRICS = ("zeroshot/digits/top1", "retrieval/digits_retrieval/image_to_text/R@1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    from clipjax.config import apply_overrides, load_config
    from clipjax.models.presets import apply_lit
    from clipjax.train.loop import train

    rows = []
    with tempfile.TemporaryDirectory() as root:
        clip = load_config("configs/default.py")
        apply_overrides(clip, [f"train.steps={args.image_steps}"])
        with clip.unlocked():
            clip.evals = {}
        train(clip, f"{root}/clip")
        for seed in args.seeds:
            row = {}
            for kind, weights_from in (("softmax", None), ("cwcl", "image")):
                config = load_config("configs/default.py")
                with config.unlocked():
                    apply_lit(config, f"{root}/clip/checkpoints")
                config.loss.kind = kind
                config.loss.cwcl_weights_from = weights_from
                apply_overrides(config, [f"seed={seed}", f"train.steps={args.steps}"])
                apply_overrides(config, ["checkpoint.every=0"])
                result = train(config, f"{root}/{kind}-{seed}")
                row[kind] = [result.final_metrics.get(name, float("nan")) for name in METRICS]
            rows.append((seed, row))
    print(
        f"\nimage tower: the default CLIP after {args.image_steps} steps; text towers: "
        f"{args.steps} steps\n\n| seed | LiT zero-shot top-1 | CWCL zero-shot top-1 "
        "| LiT image-to-text R@1 | CWCL image-to-text R@1 |\n|---|---|---|---|---|"
    )
    for seed, row in rows:
        lit, cwcl = row["softmax"], row["cwcl"]
        print(f"| {seed} | {lit[0]:.4f} | {cwcl[0]:.4f} | {lit[1]:.4f} | {cwcl[1]:.4f} |")


if __name__ == "__main__":
    main()

"""Symile vs pairwise CLIP on the XOR task, both trained by the project's trainer.

    uv run python bench/symile_xor.py [--seeds 0 1 2] [--steps 500]

Trains `configs/symile/xor.py` (Symile's loss) and `configs/symile/xor.py:pairwise`
(the mean of the three pairwise InfoNCE losses) with the same towers, data and
schedule, then predicts c for 2000 held-out noisy (a, b) pairs among all 2^bits
noiseless candidates: Symile scores a candidate by the multilinear inner product
MIP(a, b, c), pairwise CLIP by <a, c> + <b, c>. Prints a Markdown table for
BENCHMARKS.md. Chance is 1 / 2^bits.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def held_out_accuracy(config, params, samples: int) -> float:
    import numpy as np
    from flax import nnx

    from clipjax.data.synthetic import xor_candidates, xor_eval_set
    from clipjax.losses.symile import pairwise_clip_predict, symile_predict
    from clipjax.models.spec import model_spec

    model = nnx.merge(model_spec(config.model).graphdef, params)
    bits, noise = config.data.xor_bits, config.data.xor_noise
    held_out = xor_eval_set(config.seed + 10_000, samples, bits, noise)
    a, b = model.encode("a", held_out["a"]), model.encode("b", held_out["b"])
    candidates = model.encode("c", xor_candidates(bits))
    predict = symile_predict if config.loss.kind == "symile" else pairwise_clip_predict
    scores = np.asarray(predict(candidates, a, b))
    return float(np.mean(scores.argmax(axis=1) == held_out["c_label"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()

    from clipjax.config import apply_overrides, load_config
    from clipjax.train.loop import train

    rows = []
    for seed in args.seeds:
        row = {}
        for variant in ("", ":pairwise"):
            config = load_config(f"configs/symile/xor.py{variant}")
            overrides = [f"seed={seed}", f"train.steps={args.steps}", "checkpoint.every=0"]
            apply_overrides(config, overrides)
            with tempfile.TemporaryDirectory() as workdir:
                result = train(config, workdir)
            row[config.loss.kind] = held_out_accuracy(config, result.params, args.samples)
        rows.append((seed, row))
    bits = load_config("configs/symile/xor.py").data.xor_bits
    print("\n| seed | Symile | pairwise CLIP | chance |\n|---|---|---|---|")
    for seed, row in rows:
        print(f"| {seed} | {row['symile']:.4f} | {row['pairwise']:.4f} | {1 / 2**bits:.4f} |")


if __name__ == "__main__":
    main()

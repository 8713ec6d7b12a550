"""Linear-probe fit time: clipjax's JAX L-BFGS against scikit-learn's lbfgs, on the
same synthetic features (Gaussian classes), at one regularisation strength.

    uv run python bench/linear_probe.py [--samples 20000] [--dim 256] [--classes 100]

Both minimise the same objective (sklearn's `LogisticRegression(C)`, multinomial);
prints the fit times, the two objective values and the share of equal predictions.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

from clipjax.evaluate.linear_probe import _fit


def objective(x, y, c, weights, bias) -> float:
    logits = x.astype(np.float64) @ weights + bias
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-c * log_p[np.arange(len(y)), y].sum() + 0.5 * np.sum(weights**2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--c", type=float, default=1.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(args.classes, args.dim)) * 0.3
    y = rng.integers(0, args.classes, args.samples)
    x = (centers[y] + rng.normal(size=(args.samples, args.dim))).astype(np.float32)

    _fit(x[:64], y[:64], args.c, max_iter=5)  # compile outside the timing (other shapes)
    start = time.perf_counter()
    ours = _fit(x, y, args.c, max_iter=1000)
    jax_seconds = time.perf_counter() - start
    start = time.perf_counter()
    theirs = LogisticRegression(C=args.c, max_iter=1000).fit(x, y)
    sklearn_seconds = time.perf_counter() - start

    mine = objective(x, y, args.c, ours.weights.astype(np.float64), ours.bias)
    reference = objective(x, y, args.c, theirs.coef_.T, theirs.intercept_)
    agree = float(np.mean(ours.predict(x) == theirs.predict(x)))
    print(f"{args.samples} x {args.dim} features, {args.classes} classes, C={args.c}")
    print("| fit | seconds | objective |")
    print("|---|---:|---:|")
    print(f"| clipjax (JAX L-BFGS, incl. compile) | {jax_seconds:.1f} | {mine:,.2f} |")
    print(f"| scikit-learn lbfgs | {sklearn_seconds:.1f} | {reference:,.2f} |")
    ratio = sklearn_seconds / jax_seconds
    print(f"\nsklearn / clipjax time: {ratio:.2f}x; equal predictions: {agree:.4f}")


if __name__ == "__main__":
    main()

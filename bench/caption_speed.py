"""CoCa caption decoding with and without the key/value cache.

    uv run python bench/caption_speed.py [--max-len 32 64] [--batch 8] [--repeats 3]

Builds a small CoCa (width 256, 4 unimodal + 4 multimodal layers, 64 decoder
queries, byte vocabulary) with random weights and forces decoding to run to
`max_len` (EOT is never chosen: its id is out of the vocabulary's range), so both
paths decode the same number of tokens. Times greedy and 4-beam search, each jitted
and run once before timing, alternating the two paths; reports the median of
`--repeats` and checks that both paths return the same tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_model(max_len: int):
    from flax import nnx

    from clipjax.config import apply_overrides, load_config
    from clipjax.models import build_model

    config = load_config("configs/coca/base.py:tiny")
    apply_overrides(
        config,
        [
            "model.image.width=256",
            "model.image.heads=4",
            "model.image.depth=2",
            "model.text.width=256",
            "model.text.heads=4",
            f"model.text.context_length={max_len}",
            "tokenizer.context_length=" + str(max_len),
            "model.coca.unimodal_depth=4",
            "model.coca.multimodal_depth=4",
            "model.coca.decoder_queries=64",
            "model.coca.pool_heads=4",
        ],
    )
    with nnx.use_eager_sharding(False):
        return build_model(config.model, nnx.Rngs(0)), config


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    np.asarray(fn(*args, **kwargs))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-len", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import jax
    from flax import nnx

    from clipjax.models.generate import BEAM_STATIC, GREEDY_STATIC, beam_captions, greedy_captions

    greedy = nnx.jit(greedy_captions, static_argnames=GREEDY_STATIC)
    beam = nnx.jit(beam_captions, static_argnames=BEAM_STATIC)
    rows = []
    for max_len in args.max_len:
        model, config = build_model(max_len)
        size = config.model.image.image_size
        images = (
            np.random.default_rng(0).normal(size=(args.batch, size, size, 3)).astype(np.float32)
        )
        vocab = config.model.text.vocab_size
        kw = dict(sot_id=vocab - 2, eot_id=vocab + 7, max_len=max_len)  # never ends early
        for name, fn, extra in (("greedy", greedy, {}), ("beam 4", beam, {"beams": 4})):
            results = {
                c: np.asarray(fn(model, images, cache=c, **kw, **extra)) for c in (True, False)
            }
            np.testing.assert_array_equal(results[True], results[False])
            times = {True: [], False: []}
            for _ in range(args.repeats):
                for c in (True, False):
                    times[c].append(timed(fn, model, images, cache=c, **kw, **extra))
            cached, uncached = (statistics.median(times[c]) for c in (True, False))
            rows.append((max_len, name, cached, uncached))
            print(
                f"{max_len} {name}: cached {cached:.3f} s, uncached {uncached:.3f} s",
                file=sys.stderr,
            )
    print(f"\n{jax.devices()[0].platform}, batch {args.batch}, median of {args.repeats}\n")
    print("| max_len | search | with cache (s) | without (s) | speedup |")
    print("|---:|---|---:|---:|---:|")
    for max_len, name, cached, uncached in rows:
        print(f"| {max_len} | {name} | {cached:.3f} | {uncached:.3f} | {uncached / cached:.1f}x |")


if __name__ == "__main__":
    main()

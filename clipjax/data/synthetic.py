"""The binary XOR task of Symile's synthetic experiment, as a resumable batch stream.

From the paper (Saporta et al. 2024, Sec. 5.1; reference `BinaryXORDataset`):
  a, b ~ Bernoulli(0.5)^bits, i ~ Bernoulli(xor_prob) per sample,
  c = a XOR b where i = 1, else c = a.
With `xor_prob = 1` (the default) c is independent of a alone and of b alone but
determined by both: only a higher-order (three-way) objective can learn it, and
pairwise CLIP sits at chance. Zero-shot task: pick c among all 2^bits bit vectors.

Our choices: each bit is presented as +1 / -1 (bit 1 -> +1) plus Gaussian noise of
standard deviation `noise` (the paper feeds raw, noiseless 0/1 floats), so held-out
inputs differ from training inputs; candidates (`xor_candidates`) are noiseless.
Batch n is a pure function of (seed, n), so a stream resumes from `{"batches": n}`
and every process can slice the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

MODALITIES = ("a", "b", "c")
_TRAIN, _EVAL = 0, 1  # stream tags: held-out data never repeats a training batch's draws


def _check(bits: int, noise: float, xor_prob: float) -> None:
    if not 1 <= bits <= 20:
        raise ValueError(f"bits={bits} must be in [1, 20] (2^bits candidates)")
    if noise < 0:
        raise ValueError(f"noise={noise} must be >= 0")
    if not 0.0 <= xor_prob <= 1.0:
        raise ValueError(f"xor_prob={xor_prob} must be in [0, 1]")


def _sample_bits(
    rng: np.random.Generator, n: int, bits: int, xor_prob: float
) -> dict[str, np.ndarray]:
    a = rng.integers(0, 2, size=(n, bits), dtype=np.int64)
    b = rng.integers(0, 2, size=(n, bits), dtype=np.int64)
    use_xor = rng.random(n) < xor_prob
    c = np.where(use_xor[:, None], a ^ b, a)
    return {"a": a, "b": b, "c": c}


def encode_bits(bits: np.ndarray) -> np.ndarray:
    """0/1 -> -1/+1 float32."""
    return (2.0 * bits - 1.0).astype(np.float32)


def bit_labels(bits: np.ndarray) -> np.ndarray:
    """`[n, d]` 0/1 -> integer `sum_j bits[:, j] 2^j`, the row of `xor_candidates`."""
    return bits @ (1 << np.arange(bits.shape[1], dtype=np.int64))


def xor_candidates(bits: int) -> np.ndarray:
    """All 2^bits vectors, noiseless, `float32 [2^bits, bits]`; row k has label k."""
    labels = np.arange(2**bits, dtype=np.int64)
    return encode_bits((labels[:, None] >> np.arange(bits)) & 1)


def _noisy(rng: np.random.Generator, bits: dict[str, np.ndarray], noise: float) -> dict:
    return {
        name: encode_bits(bits[name]) + noise * rng.standard_normal(bits[name].shape, np.float32)
        for name in MODALITIES
    }


def xor_batch(
    seed: int, index: int, batch_size: int, bits: int, noise: float, xor_prob: float = 1.0
) -> dict[str, np.ndarray]:
    """Global training batch number `index`: `{"a", "b", "c": float32 [batch_size, bits]}`."""
    _check(bits, noise, xor_prob)
    rng = np.random.default_rng([seed, _TRAIN, index])
    return _noisy(rng, _sample_bits(rng, batch_size, bits, xor_prob), noise)


def xor_eval_set(
    seed: int, n: int, bits: int, noise: float, xor_prob: float = 1.0
) -> dict[str, np.ndarray]:
    """Held-out data: noisy `"a", "b", "c"` as in training, plus their integer labels
    `"a_label", "b_label", "c_label"` (rows of `xor_candidates`)."""
    _check(bits, noise, xor_prob)
    rng = np.random.default_rng([seed, _EVAL])
    raw = _sample_bits(rng, n, bits, xor_prob)
    out = _noisy(rng, raw, noise)
    out.update({f"{name}_label": bit_labels(raw[name]) for name in MODALITIES})
    return out


class XorLoader:
    """Endless `(batch, state)` pairs; `state` (JSON-able) is the position after `batch`,
    and `XorLoader(..., state=state)` continues with the batch that would have come next.

    `batch_size` is global; process `process_index` of `process_count` gets its slice of
    each global batch, so the data does not depend on the number of processes.
    """

    def __init__(
        self,
        seed: int,
        batch_size: int,
        bits: int,
        noise: float,
        state: dict | None = None,
        *,
        xor_prob: float = 1.0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        _check(bits, noise, xor_prob)
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} must be positive and divisible by "
                f"process_count={process_count}"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        self.seed, self.batch_size, self.bits = seed, batch_size, bits
        self.noise, self.xor_prob = noise, xor_prob
        self.rows = slice(
            process_index * batch_size // process_count,
            (process_index + 1) * batch_size // process_count,
        )
        self.batches = self._restore(state)

    def _restore(self, state: dict | None) -> int:
        if state is None:
            return 0
        if set(state) != {"seed", "batches"} or state["seed"] != self.seed:
            raise ValueError(
                f"XorLoader state {state} does not fit this loader; expected "
                f"{{'seed': {self.seed}, 'batches': n}}"
            )
        if not isinstance(state["batches"], int) or state["batches"] < 0:
            raise ValueError(f"XorLoader state batches={state['batches']!r} must be an int >= 0")
        return state["batches"]

    def state(self) -> dict:
        return {"seed": self.seed, "batches": self.batches}

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
        while True:
            batch = xor_batch(
                self.seed, self.batches, self.batch_size, self.bits, self.noise, self.xor_prob
            )
            self.batches += 1
            yield {name: x[self.rows] for name, x in batch.items()}, self.state()


def xor_train_batches(config, state: dict | None) -> Iterator[tuple[dict, dict]]:
    """The trainer's XOR batches with their loader state in the checkpoint's per-stream
    layout (`data.xor_bits`, `data.xor_noise`). Batch n is a pure function of (seed, n), so every
    process slices the same global batch and the position survives any process count."""
    import jax

    count, index = jax.process_count(), jax.process_index()
    saved = list((state or {}).get("states", {}).values())
    loader = XorLoader(
        seed=config.seed,
        batch_size=config.train.batch_size,
        bits=config.data.xor_bits,
        noise=config.data.xor_noise,
        state=saved[0] if saved else None,
        process_index=index,
        process_count=count,
    )
    for batch, position in loader:
        yield batch, {"streams": count, "states": {str(index): position}}

"""Several shard sources mixed with fixed weights, with a resumable position.

Each source is its own `SampleStream` (its own shard order and shuffle buffer).
Which source gives the n-th sample is drawn from a counter-seeded sequence, so
the position is the draw count plus each source's own state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clipjax.data.shards import CounterDraws, SampleStream

SOURCE = "__source__"  # which source an emitted sample came from


class MixedStream:
    """`next()` takes the next sample of source j with probability `weights[j] / sum`."""

    def __init__(self, sources: Sequence[SampleStream], weights: Sequence[float], seed: tuple):
        if len(sources) != len(weights) or len(sources) < 2:
            raise ValueError(
                f"{len(weights)} mixing weights for {len(sources)} sources; "
                "give one weight per source, for two or more sources"
            )
        if any(not w > 0 for w in weights):
            raise ValueError(f"mixing weights {list(weights)} must all be positive")
        self.sources = list(sources)
        self.weights = [float(w) for w in weights]
        cumulative = np.cumsum(self.weights) / sum(self.weights)
        self.stats = self.sources[0].stats
        self.emitted = 0
        self._draws = CounterDraws(
            lambda block: (*seed, block),
            lambda rng, size: np.searchsorted(cumulative, rng.random(size), side="right"),
        )

    def _source(self) -> int:
        return min(int(self._draws[self.emitted]), len(self.sources) - 1)

    def __iter__(self) -> MixedStream:
        return self

    def __next__(self) -> dict:
        source = self._source()
        sample = next(self.sources[source])  # a finished source ends the mix
        self.emitted += 1
        return {**sample, SOURCE: source}

    def state(self) -> dict:
        return {
            "mixed": True,
            "weights": self.weights,
            "emitted": self.emitted,
            "sources": [source.state() for source in self.sources],
        }

    def restore(self, state: dict) -> None:
        if not state.get("mixed") or state.get("weights") != self.weights:
            raise ValueError(
                f"data state was saved with mixing weights {state.get('weights')} but this "
                f"stream mixes with {self.weights}; it cannot continue that position"
            )
        for source, source_state in zip(self.sources, state["sources"], strict=True):
            source.restore(source_state)
        self.emitted = state["emitted"]

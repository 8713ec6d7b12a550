"""A stable number for every training example, for state kept per example (iSogCLR's
temperatures): shard and position, `(first shard of its source + shard) *
samples_per_shard + position in the shard`, over the shard list of `data.train_shards`
(img2dataset writes `number_sample_per_shard` samples to each shard, the last shorter).

The number depends only on the shard list and the tar order inside each shard, so it is
the same on any process count, stream count, worker count, shuffle and resume.
"""

from __future__ import annotations

from collections.abc import Sequence

from clipjax.data.mixing import SOURCE
from clipjax.data.shards import OFFSET, SHARD
from clipjax.data.skips import UnusableData

MAX_EXAMPLES = 2**31 - 1  # the index travels as int32


class ExampleIndex:
    def __init__(self, samples_per_shard: int, shards_per_source: Sequence[int]):
        if samples_per_shard < 1:
            raise ValueError(f"data.samples_per_shard={samples_per_shard} must be positive")
        self.samples_per_shard = samples_per_shard
        self.first_shard = [sum(shards_per_source[:j]) for j in range(len(shards_per_source))]
        self.size = sum(shards_per_source) * samples_per_shard
        if self.size > MAX_EXAMPLES:
            raise ValueError(
                f"{sum(shards_per_source)} shards x data.samples_per_shard={samples_per_shard} "
                f"= {self.size} example slots; at most {MAX_EXAMPLES} fit an int32 index"
            )

    def __call__(self, sample: dict) -> int:
        offset = sample[OFFSET]
        if offset >= self.samples_per_shard:
            raise UnusableData(
                f"{sample.get('__url__')} has more than data.samples_per_shard="
                f"{self.samples_per_shard} samples (sample {offset + 1} is "
                f"{sample.get('__key__')!r}); set it to the largest shard's sample count"
            )
        shard = self.first_shard[sample.get(SOURCE, 0)] + sample[SHARD]
        return shard * self.samples_per_shard + offset

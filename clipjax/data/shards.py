"""Streaming samples out of webdataset tar shards.

Shards are listed from brace specs, shuffled per epoch with a seed, split
between processes by `jax.process_index()`, read with webdataset's tar
iterator (no torch involved) and passed through a seeded shuffle buffer.
Unreadable shards and samples are counted and warned about, never fatal on
their own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from braceexpand import braceexpand
from webdataset import tariterators

log = logging.getLogger(__name__)


def expand_urls(spec: str) -> list[str]:
    """`/d/{000..009}.tar::/e/x.tar` -> the list of shard URLs."""
    urls = [url for part in spec.split("::") if part.strip() for url in braceexpand(part.strip())]
    if not urls:
        raise ValueError(f"shard spec {spec!r} names no shards")
    return urls


@dataclass
class DataStats:
    """Counters of data problems, shared by the reading threads."""

    skipped_samples: int = 0
    failed_shards: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def as_metrics(self) -> dict[str, int]:
        return {
            "data/skipped_samples": self.skipped_samples,
            "data/failed_shards": self.failed_shards,
        }


def process_shards(
    urls: list[str], epoch: int, seed: int, shuffle: bool, process_index: int, process_count: int
) -> list[str]:
    """This process's shards for `epoch`: a seeded permutation, then every n-th."""
    if len(urls) < process_count:
        raise ValueError(
            f"{len(urls)} shard(s) cannot be split between {process_count} processes; "
            "write more, smaller shards"
        )
    order = list(urls)
    if shuffle:
        np.random.default_rng((seed, epoch)).shuffle(order)
    return order[process_index::process_count]


def read_shard(url: str, stats: DataStats) -> Iterator[dict]:
    """Yields the samples of one shard; a broken shard is counted and ends early."""
    errors: list[Exception] = []

    def handler(exc: Exception) -> bool:
        errors.append(exc)
        return True

    yield from tariterators.tarfile_samples([{"url": url}], handler=handler)
    if errors:
        stats.count("failed_shards")
        log.warning("shard %s: %s", url, errors[0])


class SampleStream:
    """Iterates raw samples: forever (training, new shard order each epoch) or once."""

    def __init__(
        self,
        urls: list[str],
        *,
        seed: int,
        repeat: bool,
        shuffle_shards: bool,
        shuffle_buffer: int,
        process_index: int = 0,
        process_count: int = 1,
        stats: DataStats | None = None,
    ):
        self.urls = urls
        self.seed = seed
        self.repeat = repeat
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = shuffle_buffer
        self.process_index = process_index
        self.process_count = process_count
        self.stats = stats or DataStats()

    def _unshuffled(self) -> Iterator[dict]:
        epoch = 0
        while True:
            shards = process_shards(
                self.urls,
                epoch,
                self.seed,
                self.shuffle_shards,
                self.process_index,
                self.process_count,
            )
            produced = 0
            for url in shards:
                for sample in read_shard(url, self.stats):
                    produced += 1
                    yield sample
            if not self.repeat:
                return
            if produced == 0:
                raise RuntimeError(
                    f"no sample could be read from any of {len(shards)} shard(s) "
                    f"(first: {shards[0]!r}); see the warnings above"
                )
            epoch += 1

    def __iter__(self) -> Iterator[dict]:
        if self.shuffle_buffer <= 1:
            yield from self._unshuffled()
            return
        rng = np.random.default_rng((self.seed, self.process_index, 1))
        buffer: list[dict] = []
        for sample in self._unshuffled():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            index = int(rng.integers(len(buffer)))
            buffer[index], sample = sample, buffer[index]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

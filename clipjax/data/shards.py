"""Streaming samples out of webdataset tar shards, with a resumable position.

Shards are listed from brace specs and assigned to this process by
`jax.process_index()`: in `epoch` mode a seeded permutation per epoch split
every n-th, in `resampled` mode drawn with replacement from a per-process
seed, in `once` mode (evaluation) each shard of this process read once.
Samples pass through a seeded shuffle buffer. The stream's `state()` is a
small JSON-able dict (shard cursor, buffer references, emitted count) from
which `restore()` continues with exactly the samples an uninterrupted stream
would have produced. Unreadable shards and samples are counted and warned
about, never fatal on their own.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import fsspec
import numpy as np
from braceexpand import braceexpand
from webdataset.gopen import gopen

from clipjax.data.tar_reader import tar_samples

log = logging.getLogger(__name__)

MODES = ("epoch", "resampled", "once")
STATE_VERSION = 1
_DRAW_BLOCK = 4096  # draws generated per seeded block


class CounterDraws:
    """The n-th value of a seeded sequence without keeping an RNG state: values come
    in blocks, block b generated from `seed(b)`, so a position is just n."""

    def __init__(
        self,
        seed: Callable[[int], tuple],
        generate: Callable[[np.random.Generator, int], np.ndarray],
    ):
        self._seed = seed
        self._generate = generate
        self._block: tuple[int, np.ndarray] | None = None

    def __getitem__(self, n: int):
        block, index = divmod(n, _DRAW_BLOCK)
        if self._block is None or self._block[0] != block:
            rng = np.random.default_rng(self._seed(block))
            self._block = (block, self._generate(rng, _DRAW_BLOCK))
        return self._block[1][index]


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
    order = _epoch_order(len(urls), epoch, seed, shuffle, process_index, process_count)
    return [urls[i] for i in order]


def _epoch_order(
    n: int, epoch: int, seed: int, shuffle: bool, process_index: int, process_count: int
) -> list[int]:
    if n < process_count:
        raise ValueError(
            f"{n} shard(s) cannot be split between {process_count} processes; "
            "write more, smaller shards or use data.mode='resampled'"
        )
    order = np.arange(n)
    if shuffle:
        np.random.default_rng((seed, epoch)).shuffle(order)
    return order[process_index::process_count].tolist()


GOPEN_SCHEMES = ("", "file", "http", "https")  # and pipe:, which has no "://"


def url_scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def open_shard(url: str) -> BinaryIO:
    """Local paths, `pipe:` commands and http(s) through webdataset's `gopen`; any
    other `scheme://` (gs, s3, az, hf, memory, ...) through fsspec."""
    if url.startswith("pipe:") or url_scheme(url) in GOPEN_SCHEMES:
        return gopen(url)
    return fsspec.open(url, "rb").open()


def check_openers(urls: list[str]) -> None:
    """Fails early, naming the package to install, when a URL's fsspec backend is missing."""
    schemes = {url_scheme(u) for u in urls if not u.startswith("pipe:")} - set(GOPEN_SCHEMES)
    for scheme in sorted(schemes):
        try:
            fsspec.get_filesystem_class(scheme)
        except (ImportError, ValueError) as exc:
            raise ValueError(f"cannot read {scheme}:// shards: {exc}") from None


def read_shard(url: str, stats: DataStats) -> Iterator[dict]:
    """Yields the samples of one shard; a broken shard is counted and ends early.

    `url` is opened by `open_shard` and read by `tar_reader`.
    """
    try:
        stream = open_shard(url)
    except Exception as exc:  # any opener failure is a failed shard, never a crash
        _failed(url, exc, stats)
        return
    raw, finished = stream, False
    try:
        if url.endswith((".gz", ".tgz")):
            stream = gzip.GzipFile(fileobj=raw)
        yield from tar_samples(stream, url)
        finished = True
        stream.close()
        raw.close()  # a pipe's exit status is checked here (GzipFile leaves it open)
    except Exception as exc:  # zlib, fsspec backends, pipes: a bad shard, never a crash
        _failed(url, exc, stats)
    finally:
        if not finished:
            with contextlib.suppress(Exception):
                raw.close()


def _failed(url: str, exc: Exception, stats: DataStats) -> None:
    stats.count("failed_shards")
    log.warning("shard %s: %s", url, exc)


def urls_fingerprint(urls: list[str]) -> str:
    return hashlib.sha256("\n".join(urls).encode()).hexdigest()[:16]


SHARD, OFFSET = "__shard__", "__offset__"  # an emitted sample's origin (ints)


class SampleStream:
    """An iterator of raw samples (dicts of member bytes) with `state()`/`restore()`.

    The k-th shard this process reads is a pure function of (mode, seed, k, process),
    and buffer slots are drawn from a counter-based seeded sequence, so a position
    is (next shard k, samples taken from it, buffer references, samples emitted).
    """

    def __init__(
        self,
        urls: list[str],
        *,
        seed: int,
        mode: str = "epoch",
        shuffle_shards: bool = True,
        shuffle_buffer: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        stats: DataStats | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"data mode {mode!r}; expected one of {MODES}")
        if not urls:
            raise ValueError("no shard URLs given")
        self.urls = list(urls)
        self.seed = seed
        self.mode = mode
        self.shuffle_shards = shuffle_shards
        self.buffer_size = max(1, shuffle_buffer)
        self.process_index = process_index
        self.process_count = process_count
        self.stats = stats or DataStats()
        self._per_epoch = 0
        if mode != "resampled":
            self._per_epoch = len(self._order(0))
        self._orders: dict[int, list[int]] = {}
        self._draws = CounterDraws(
            lambda block: (seed, process_index, block, 5),
            lambda rng, size: rng.integers(0, 2**62, size=size),
        )
        self._reset(emitted=0, shard=0, offset=0)

    # -- positions --------------------------------------------------------

    def _reset(self, emitted: int, shard: int, offset: int) -> None:
        self.emitted = emitted
        self.shard = shard  # index k of the shard being read (or next to open)
        self.offset = offset  # samples already taken from shard k
        self.buffer: list[tuple[tuple[int, int], dict]] = []
        self._reader: Iterator[dict] | None = None
        self._empty_run = 0

    def _order(self, epoch: int) -> list[int]:
        shuffle = self.shuffle_shards and self.mode == "epoch"
        return _epoch_order(
            len(self.urls), epoch, self.seed, shuffle, self.process_index, self.process_count
        )

    def shard_url(self, k: int) -> str | None:
        """URL of the k-th shard this process reads; None when a `once` stream is done."""
        number = self.shard_number(k)
        return None if number is None else self.urls[number]

    def shard_number(self, k: int) -> int | None:
        """Which of `urls` the k-th shard this process reads is."""
        if self.mode == "resampled":
            rng = np.random.default_rng((self.seed, self.process_index, k, 3))
            return int(rng.integers(len(self.urls)))
        epoch, position = divmod(k, self._per_epoch)
        if self.mode == "once" and epoch > 0:
            return None
        if epoch not in self._orders:  # the buffer can hold the previous epoch's samples
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
            self._orders[epoch] = self._order(epoch)
        return self._orders[epoch][position]

    # -- reading ----------------------------------------------------------

    def _next_raw(self) -> tuple[tuple[int, int], dict] | None:
        """The next sample in shard order with its reference (k, index), or None at the end."""
        while True:
            if self._reader is None:
                url = self.shard_url(self.shard)
                if url is None:
                    return None
                self._reader = _skip(read_shard(url, self.stats), self.offset)
            sample = next(self._reader, None)
            if sample is not None:
                ref = (self.shard, self.offset)
                self.offset += 1
                self._empty_run = 0
                return ref, sample
            self._end_shard()

    def _end_shard(self) -> None:
        if self.offset == 0:
            self._empty_run += 1
            limit = self._per_epoch or len(self.urls)
            if self._empty_run >= limit and self.mode != "once":
                raise RuntimeError(
                    f"no sample could be read from {self._empty_run} shard(s) in a row "
                    f"(last: {self.shard_url(self.shard)!r}); see the warnings above"
                )
        self.shard += 1
        self.offset = 0
        self._reader = None

    def _slot(self) -> int:
        return int(self._draws[self.emitted] % len(self.buffer))

    def __iter__(self) -> SampleStream:
        return self

    def __next__(self) -> dict:
        while len(self.buffer) < self.buffer_size:
            item = self._next_raw()
            if item is None:
                break
            self.buffer.append(item)
        if not self.buffer:
            raise StopIteration
        slot = self._slot()
        (k, offset), sample = self.buffer[slot]
        self.buffer[slot] = self.buffer[-1]
        self.buffer.pop()
        self.emitted += 1
        # where it came from: which of `urls`, and its position in that shard
        return {**sample, SHARD: self.shard_number(k), OFFSET: offset}

    # -- state ------------------------------------------------------------

    def state(self) -> dict:
        """The position after the last emitted sample, as plain JSON types."""
        return {
            "version": STATE_VERSION,
            "mode": self.mode,
            "seed": self.seed,
            "process": [self.process_index, self.process_count],
            "urls": [len(self.urls), urls_fingerprint(self.urls)],
            "buffer_size": self.buffer_size,
            "emitted": self.emitted,
            "shard": self.shard,
            "offset": self.offset,
            "buffer": [list(ref) for ref, _ in self.buffer],
        }

    def restore(self, state: dict) -> None:
        """Continues from `state()` of a stream built with the same arguments."""
        expected = self.state()
        for key in ("version", "mode", "seed", "process", "urls", "buffer_size"):
            if state.get(key) != expected[key]:
                raise ValueError(
                    f"data state was saved with {key}={state.get(key)!r} but this stream has "
                    f"{key}={expected[key]!r}; it cannot continue that position"
                )
        self._reset(state["emitted"], state["shard"], state["offset"])
        self.buffer = self._refetch([tuple(ref) for ref in state["buffer"]])

    def _refetch(self, refs: list[tuple[int, int]]) -> list[tuple[tuple[int, int], dict]]:
        """Reads the buffered samples again from their shards, keeping buffer order."""
        wanted_by_shard: dict[int, set[int]] = {}
        for k, index in refs:
            wanted_by_shard.setdefault(k, set()).add(index)
        found: dict[tuple[int, int], dict] = {}
        for k, wanted in sorted(wanted_by_shard.items()):
            url = self.shard_url(k)
            for index, sample in enumerate(read_shard(url, self.stats)):
                if index in wanted:
                    found[(k, index)] = sample
                if index >= max(wanted):
                    break
        missing = [ref for ref in refs if ref not in found]
        if missing:
            self.stats.count("skipped_samples", len(missing))
            log.warning("%d buffered sample(s) could not be read again on resume", len(missing))
        return [(ref, found[ref]) for ref in refs if ref in found]


def _skip(samples: Iterator[dict], count: int) -> Iterator[dict]:
    for _ in range(count):
        if next(samples, None) is None:
            break
    return samples

"""Batches of decoded, transformed, tokenized samples, and their move to devices."""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from clipjax.data.augment import build_augments
from clipjax.data.decode import ImageTransform
from clipjax.data.example_index import ExampleIndex
from clipjax.data.mixing import MixedStream
from clipjax.data.pipeline import OrderedDecoder, PairDecoder
from clipjax.data.shards import DataStats, SampleStream
from clipjax.data.skips import SkipMonitor, Skipped, UnusableData
from clipjax.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)


class PairLoader:
    """Yields `(batch, state)`: numpy batches `{"image": u8[b,H,W,3], "text": i32[b,L]}`
    (and `"index": i32[b]`, each example's stable number, with `example_index`) and the
    loader position just after each, from which `PairLoader(..., state=state)`
    continues with exactly the batches that would have come next."""

    def __init__(
        self,
        stream: SampleStream | MixedStream,
        decoder: PairDecoder,
        *,
        tokenizer: Tokenizer,
        batch_size: int,
        workers: int = 0,
        stats: DataStats,
        state: dict | None = None,
        skips: SkipMonitor | None = None,
        example_index: ExampleIndex | None = None,
    ):
        self.stream = stream
        self.example_index = example_index
        self.skips = skips or SkipMonitor(0.5, 1000, "the decoder's keys")
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.ordered = OrderedDecoder(decoder, workers)
        self.stats = stats
        self.state = state

    def _start(self) -> None:
        if self.state is None:
            return
        self.stream.restore(self.state["stream"])
        for _ in range(self.state["skip"]):
            if next(self.stream, None) is None:
                break
        for name, value in self.state.get("stats", {}).items():
            setattr(self.stats, name, value)

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
        self._start()
        stream, snapshots, example_ids = self.stream, deque(), {}

        def numbered() -> Iterator[tuple[int, dict]]:
            while True:
                if not snapshots or stream.emitted % self.batch_size == 0:
                    snapshots.append(stream.state())
                index = stream.emitted
                sample = next(stream, None)
                if sample is None:
                    return
                self.skips.saw(sample)
                if self.example_index is not None:
                    example_ids[index] = self.example_index(sample)
                yield index, sample

        images, texts, ids = [], [], []
        try:
            for index, result in self.ordered(numbered()):
                example_id = example_ids.pop(index, None)
                if isinstance(result, Skipped):
                    self.stats.count("skipped_samples")
                    self.skips.skip(result)
                    continue
                self.skips.decoded()
                images.append(result[0])
                texts.append(result[1])
                ids.append(example_id)
                if len(images) == self.batch_size:
                    batch = {
                        "image": np.stack(images),  # uint8; the train step normalises on device
                        "text": self.tokenizer(texts),
                    }
                    if self.example_index is not None:
                        batch["index"] = np.asarray(ids, np.int32)
                    yield batch, self._state_after(index + 1, snapshots)
                    images, texts, ids = [], [], []
        finally:
            self.skips.flush()

    def _state_after(self, emitted: int, snapshots: deque) -> dict:
        while len(snapshots) > 1 and snapshots[1]["emitted"] <= emitted:
            snapshots.popleft()
        snapshot = snapshots[0]
        stats = {
            "skipped_samples": self.stats.skipped_samples,
            "failed_shards": self.stats.failed_shards,
        }
        return {"stream": snapshot, "skip": emitted - snapshot["emitted"], "stats": stats}


class Prefetch:
    """Runs `iterator` in a background thread, `size` items ahead; re-raises its
    errors. `close()` stops the thread and closes the iterator (its workers)."""

    _DONE = object()

    def __init__(self, iterator: Iterator, size: int = 2):
        self._items: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(iterator,), daemon=True, name="clipjax-prefetch"
        )
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, iterator: Iterator) -> None:
        try:
            for item in iterator:
                if not self._put(item):
                    break
        except BaseException as exc:  # handed to the consumer
            self._put(exc)
        finally:
            if hasattr(iterator, "close"):
                iterator.close()
        self._put(self._DONE)

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self):
        item = self._items.get()
        if item is self._DONE:
            self._stop.set()
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def to_global(batch: dict[str, np.ndarray], sharding_for: Callable) -> dict:
    """Host-local numpy batch -> global jax.Arrays sharded by `sharding_for(ndim)`."""
    import jax  # here, so that data workers never import JAX

    return {
        name: jax.make_array_from_process_local_data(sharding_for(value.ndim), value)
        for name, value in batch.items()
    }


def train_sources(data_cfg) -> list[list[str]]:
    """Shard URLs of the training set, one list per mixed source: the bundled digits
    (built once) or the brace specs of `data.train_shards` (joined by `::`), which are
    separate sources when `data.weights` mixes them and one source otherwise."""
    if data_cfg.source == "digits":
        from clipjax.data.writer import build_digits_shards

        return [
            build_digits_shards(
                data_cfg.cache_dir or None, image_size=data_cfg.image_size
            ).train_urls()
        ]
    from clipjax.data.shards import expand_urls

    specs = [part for part in data_cfg.train_shards.split("::") if part.strip()]
    if not data_cfg.weights:
        return [expand_urls(data_cfg.train_shards)]
    if len(specs) != len(data_cfg.weights):
        raise ValueError(
            f"data.weights has {len(data_cfg.weights)} entries for {len(specs)} "
            f"'::'-separated shard specs in data.train_shards"
        )
    return [expand_urls(spec) for spec in specs]


def example_numbering(data_cfg, sources: list[list[str]] | None = None) -> ExampleIndex | None:
    """How the training examples are numbered (`data.samples_per_shard` slots per shard of
    `sources`, default `train_sources`), or None when batches carry no numbers."""
    if not data_cfg.get("samples_per_shard"):
        return None
    sources = train_sources(data_cfg) if sources is None else sources
    return ExampleIndex(data_cfg.samples_per_shard, [len(urls) for urls in sources])


def stream_range(streams: int, process_index: int, process_count: int) -> range:
    """The data streams a process owns: `streams` (0: one per process) split in blocks."""
    count = streams or process_count
    if count % process_count:
        raise ValueError(f"data.streams={streams} is not divisible by {process_count} processes")
    per = count // process_count
    return range(process_index * per, (process_index + 1) * per)


class StreamGroup:
    """A process's share of the run's data streams, batched side by side.

    Stream j is the same sample sequence whatever the process count, and the
    global batch is the streams' batches in stream order. So a run with a fixed
    `data.streams` sees the same data on 1 process or on 8, and its checkpoint
    resumes on either."""

    def __init__(
        self,
        loaders: dict[int, PairLoader],
        count: int,
        stats: DataStats | None = None,
        numbering: dict | None = None,
    ):
        self.loaders = loaders
        self.count = count
        self.stats = stats or DataStats()  # the sum of the streams' counters
        self.numbering = numbering or {}  # how examples were numbered, kept in the state

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
        iterators = {j: iter(loader) for j, loader in self.loaders.items()}
        try:
            while True:
                parts = {}
                for j, iterator in iterators.items():
                    part = next(iterator, None)
                    if part is None:
                        return
                    parts[j] = part
                batches = [batch for batch, _ in parts.values()]
                batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
                states = {str(j): state for j, (_, state) in parts.items()}
                add_stream_stats(states, self.stats)
                yield batch, {"streams": self.count, "states": states, **self.numbering}
        finally:
            for iterator in iterators.values():
                iterator.close()


def _stream_states(saved: dict | None, count: int, owned: range) -> dict:
    if saved is None:
        return {}
    if saved.get("streams") != count:
        log.warning(
            "the checkpoint's data position is for %s streams and this run has %d "
            "(data.streams=0 means one per process): the data stream starts afresh; "
            "set data.streams to keep the position when the process count changes",
            saved.get("streams"),
            count,
        )
        return {}
    missing = [j for j in owned if str(j) not in saved["states"]]
    if missing:
        raise ValueError(f"the checkpoint's data position has no state for streams {missing}")
    return {j: saved["states"][str(j)] for j in owned}


def _check_numbering(saved: dict | None, samples_per_shard: int | None) -> None:
    """Per-example state is stored by example number: the numbering must not change."""
    if saved is None or saved.get("samples_per_shard") == samples_per_shard:
        return
    raise UnusableData(
        f"the checkpoint numbered its examples with data.samples_per_shard="
        f"{saved.get('samples_per_shard')} and this run has {samples_per_shard}: its "
        "per-example state would belong to other examples; keep the checkpoint's value"
    )


def stream_loader(
    config,
    j: int,
    count: int,
    tokenizer: Tokenizer,
    state: dict | None = None,
    sources: list[list[str]] | None = None,
) -> PairLoader:
    """Stream j of `count` over `sources` (default `train_sources`): its samples, decoded
    and batched inline, with its own counters (`loader.stats`), continuing from `state`
    when given. The same stream whichever process or worker builds it."""
    from clipjax.data.decode import parse_keys

    d = config.data
    sources = train_sources(d) if sources is None else sources
    image_augment, text_augment = build_augments(d.augment)
    transform = ImageTransform(
        d.image_size, d.mean, d.std, train=True, crop_scale=d.crop_scale, augment=image_augment
    )
    stats = DataStats()
    streams = [
        SampleStream(
            urls,
            seed=config.seed + i,
            mode=d.mode,
            shuffle_shards=True,
            shuffle_buffer=d.shuffle_buffer,
            process_index=j,
            process_count=count,
            stats=stats,
        )
        for i, urls in enumerate(sources)
    ]
    stream = streams[0]
    if len(streams) > 1:
        stream = MixedStream(streams, d.weights, (config.seed, j, 7))
    decoder = PairDecoder(
        transform=transform,
        image_keys=parse_keys(d.image_key),
        text_key=d.text_key,
        max_pixels=d.max_pixels,
        seed=(config.seed, j, 2),
        text_augment=text_augment,
    )
    return PairLoader(
        stream,
        decoder,
        tokenizer=tokenizer,
        batch_size=config.train.batch_size // count,
        stats=stats,
        state=state,
        skips=SkipMonitor(
            d.max_skipped_fraction,
            d.sanity_samples,
            f"data.image_key={d.image_key!r}, data.text_key={d.text_key!r}",
        ),
        example_index=example_numbering(d, sources),
    )


def add_stream_stats(states: dict[str, dict], stats: DataStats) -> None:
    """Sets the process's counters to the sum of its streams' (each state keeps its own)."""
    for name in ("skipped_samples", "failed_shards"):
        setattr(stats, name, sum(s.get("stats", {}).get(name, 0) for s in states.values()))


def worker_count(workers: int, owned: range) -> int:
    """Worker processes for the streams `owned`: each reads whole streams, so at most one
    per stream."""
    if workers > len(owned):
        log.warning(
            "data.workers=%d but this process reads %d data stream(s) (data.streams): a "
            "worker reads whole streams, so %d worker(s) run; set data.streams to the "
            "processes times the workers to use them all",
            workers,
            len(owned),
            len(owned),
        )
    return min(workers, len(owned))


def train_loader(config, tokenizer: Tokenizer, stats: DataStats, state: dict | None = None):
    """This process's endless training batches with their resumable state: read inline,
    or by `data.workers` processes that each own some of its streams."""
    import jax

    d = config.data
    owned = stream_range(d.streams, jax.process_index(), jax.process_count())
    count = d.streams or jax.process_count()
    _check_numbering(state, d.get("samples_per_shard"))
    states = _stream_states(state, count, owned)
    numbering = {"samples_per_shard": d.samples_per_shard} if d.get("samples_per_shard") else {}
    sources = train_sources(d)
    workers = worker_count(d.workers, owned)
    if workers:
        from clipjax.data.stream_workers import StreamWorkers, WorkerTask

        task = WorkerTask(config, tokenizer, sources, count, owned.start, batch_layout(config))
        return StreamWorkers(task, owned, states, workers, stats, numbering)
    loaders = {j: stream_loader(config, j, count, tokenizer, states.get(j), sources) for j in owned}
    return StreamGroup(loaders, count, stats, numbering)


def batch_layout(config) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Each batch entry's per-example shape and dtype, as the loaders yield them:
    uint8 images and int32 tokens, or one float32 vector per Symile modality."""
    d = config.data
    if d.source == "xor":
        return {name: ((d.xor_bits,), np.dtype(np.float32)) for name in config.model.modalities}
    layout = {
        "image": ((d.image_size, d.image_size, 3), np.dtype(np.uint8)),
        "text": ((config.tokenizer.context_length,), np.dtype(np.int32)),
    }
    if d.get("samples_per_shard"):
        layout["index"] = ((), np.dtype(np.int32))  # each example's stable number
    return layout


def batch_source(config, tokenizer, stats: DataStats, state: dict | None):
    """This process's `(batch, loader state)` pairs: webdataset pairs or the XOR task."""
    if config.data.source != "xor":
        return train_loader(config, tokenizer, stats, state)
    from clipjax.data.synthetic import xor_train_batches

    return xor_train_batches(config, state)

"""Batches of decoded, transformed, tokenized samples, and their move to devices."""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np

from clipjax.data.decode import BadSample, ImageTransform, read_image, read_label
from clipjax.data.pipeline import OrderedDecoder, PairDecoder
from clipjax.data.shards import DataStats, SampleStream
from clipjax.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)


class PairLoader:
    """Yields `(batch, state)`: numpy batches `{"image": f32[b,H,W,3], "text": i32[b,L]}`
    and the loader position just after each, from which `PairLoader(..., state=state)`
    continues with exactly the batches that would have come next."""

    def __init__(
        self,
        stream: SampleStream,
        decoder: PairDecoder,
        *,
        tokenizer: Tokenizer,
        batch_size: int,
        workers: int = 0,
        stats: DataStats,
        state: dict | None = None,
    ):
        self.stream = stream
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
        stream, snapshots = self.stream, deque()

        def numbered() -> Iterator[tuple[int, dict]]:
            while True:
                if not snapshots or stream.emitted % self.batch_size == 0:
                    snapshots.append(stream.state())
                index = stream.emitted
                sample = next(stream, None)
                if sample is None:
                    return
                yield index, sample

        images, texts = [], []
        for index, result in self.ordered(numbered()):
            if isinstance(result, str):
                self.stats.count("skipped_samples")
                log.warning(result)
                continue
            images.append(result[0])
            texts.append(result[1])
            if len(images) == self.batch_size:
                batch = {
                    "image": self.decoder.transform.normalize(np.stack(images)),
                    "text": self.tokenizer(texts),
                }
                yield batch, self._state_after(index + 1, snapshots)
                images, texts = [], []

    def _state_after(self, emitted: int, snapshots: deque) -> dict:
        while len(snapshots) > 1 and snapshots[1]["emitted"] <= emitted:
            snapshots.popleft()
        snapshot = snapshots[0]
        stats = {
            "skipped_samples": self.stats.skipped_samples,
            "failed_shards": self.stats.failed_shards,
        }
        return {"stream": snapshot, "skip": emitted - snapshot["emitted"], "stats": stats}


def decoded(samples: Iterable[dict], decode: Callable, stats: DataStats) -> Iterator:
    """`decode(sample)` for each sample; a BadSample is counted, warned about and skipped."""
    for sample in samples:
        try:
            yield decode(sample)
        except BadSample as exc:
            stats.count("skipped_samples")
            log.warning("skipping sample in %s: %s", sample.get("__url__"), exc)


def labelled_images(
    samples: Iterable[dict],
    transform: ImageTransform,
    image_keys: tuple[str, ...],
    max_pixels: int,
    stats: DataStats,
) -> tuple[np.ndarray, np.ndarray]:
    """Every (image, .cls label) pair of a finite sample stream, in order."""
    rng = np.random.default_rng(0)
    images, labels = [], []

    def decode(sample: dict):
        return read_image(sample, image_keys, max_pixels), read_label(sample)

    for image, label in decoded(samples, decode, stats):
        images.append(transform(image, rng))
        labels.append(label)
    if not images:
        raise RuntimeError("the evaluation set yielded no readable (image, label) sample")
    return np.stack(images), np.asarray(labels, np.int64)


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


def to_global(batch: dict[str, np.ndarray], sharding_for: Callable) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global jax.Arrays sharded by `sharding_for(ndim)`."""
    return {
        name: jax.make_array_from_process_local_data(sharding_for(value.ndim), value)
        for name, value in batch.items()
    }


def train_urls(data_cfg) -> list[str]:
    """Shard URLs of the training set: the bundled digits (built once) or a brace spec."""
    if data_cfg.source == "digits":
        from clipjax.data.writer import build_digits_shards

        return build_digits_shards(
            data_cfg.cache_dir or None, image_size=data_cfg.image_size
        ).train_urls()
    from clipjax.data.shards import expand_urls

    return expand_urls(data_cfg.train_shards)


def train_loader(
    config, tokenizer: Tokenizer, stats: DataStats, state: dict | None = None
) -> PairLoader:
    """This process's endless training batches with their resumable state."""
    from clipjax.data.decode import parse_keys

    d = config.data
    process = jax.process_index()
    stream = SampleStream(
        train_urls(d),
        seed=config.seed,
        mode=d.mode,
        shuffle_shards=True,
        shuffle_buffer=d.shuffle_buffer,
        process_index=process,
        process_count=jax.process_count(),
        stats=stats,
    )
    decoder = PairDecoder(
        transform=ImageTransform(d.image_size, d.mean, d.std, train=True, crop_scale=d.crop_scale),
        image_keys=parse_keys(d.image_key),
        text_key=d.text_key,
        max_pixels=d.max_pixels,
        seed=(config.seed, process, 2),
    )
    return PairLoader(
        stream,
        decoder,
        tokenizer=tokenizer,
        batch_size=config.train.batch_size // jax.process_count(),
        workers=d.workers,
        stats=stats,
        state=state,
    )

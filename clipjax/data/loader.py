"""Batches of decoded, transformed, tokenized samples, and their move to devices."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np

from clipjax.data.decode import BadSample, ImageTransform, read_image, read_label, read_text
from clipjax.data.shards import DataStats
from clipjax.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)


class PairBatcher:
    """Raw samples -> `{"image": f32[b,H,W,3], "text": i32[b,L]}` numpy batches."""

    def __init__(
        self,
        samples: Iterable[dict],
        *,
        batch_size: int,
        transform: ImageTransform,
        tokenizer: Tokenizer,
        image_keys: tuple[str, ...],
        text_key: str,
        max_pixels: int,
        seed: int,
        stats: DataStats,
    ):
        self.samples = samples
        self.batch_size = batch_size
        self.transform = transform
        self.tokenizer = tokenizer
        self.image_keys = image_keys
        self.text_key = text_key
        self.max_pixels = max_pixels
        self.rng = np.random.default_rng((seed, 2))
        self.stats = stats

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        def decode(sample: dict):
            return read_image(sample, self.image_keys, self.max_pixels), read_text(
                sample, self.text_key
            )

        images, texts = [], []
        for image, text in decoded(self.samples, decode, self.stats):
            images.append(self.transform(image, self.rng))
            texts.append(text)
            if len(images) == self.batch_size:
                yield {"image": np.stack(images), "text": self.tokenizer(texts)}
                images, texts = [], []


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


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
    """Runs `iterator` in a background thread, `size` items ahead; re-raises its errors."""
    items: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def produce() -> None:
        try:
            for item in iterator:
                items.put(item)
        except BaseException as exc:  # handed to the consumer below
            items.put(exc)
        items.put(done)

    threading.Thread(target=produce, daemon=True, name="clipjax-prefetch").start()
    while (item := items.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


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


def train_batches(
    config, tokenizer: Tokenizer, stats: DataStats
) -> Iterator[dict[str, np.ndarray]]:
    """This process's endless stream of training batches (numpy, host-local)."""
    from clipjax.data.decode import parse_keys
    from clipjax.data.shards import SampleStream

    d = config.data
    stream = SampleStream(
        train_urls(d),
        seed=config.seed,
        repeat=True,
        shuffle_shards=True,
        shuffle_buffer=d.shuffle_buffer,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        stats=stats,
    )
    transform = ImageTransform(d.image_size, d.mean, d.std, train=True, crop_scale=d.crop_scale)
    return iter(
        PairBatcher(
            stream,
            batch_size=config.train.batch_size // jax.process_count(),
            transform=transform,
            tokenizer=tokenizer,
            image_keys=parse_keys(d.image_key),
            text_key=d.text_key,
            max_pixels=d.max_pixels,
            seed=config.seed + 1000 * jax.process_index(),
            stats=stats,
        )
    )

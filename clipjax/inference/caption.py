"""`clipjax caption`: a CoCa model's captions for every image of a folder or shard
spec, streamed in batches (unreadable images are reported, not captioned)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from clipjax.data.decode import ImageTransform
from clipjax.data.pipeline import OrderedDecoder
from clipjax.data.shards import DataStats
from clipjax.data.skips import Skipped
from clipjax.inference.embed import DEFAULT_IMAGE_KEYS, ImageDecoder, image_units, unit_samples

PER_UNIT = 10_000  # folder files listed per unit


def caption_images(
    model,
    images: str,
    *,
    beams: int = 1,
    max_len: int | None = None,
    length_penalty: float = 0.0,
    workers: int = 0,
    image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS,
    max_pixels: int = 64_000_000,
) -> Iterator[dict]:
    """Yields `{"key", "source", "caption"}` per readable image, in input order, and
    `{"key", "source", "error"}` per unreadable one; a shard that cannot be read to
    its end yields `{"source", "error"}` after its readable images."""
    data = model.config.data
    transform = ImageTransform(model.image_size, data.mean, data.std, train=False)
    decoder = ImageDecoder(transform, tuple(image_keys), max_pixels)
    options = dict(beams=beams, max_len=max_len, length_penalty=length_penalty)
    for unit in image_units(images, PER_UNIT):
        stats, crops, keys = DataStats(), [], []
        for _, decoded in OrderedDecoder(decoder, workers)(enumerate(unit_samples(unit, stats))):
            if isinstance(decoded, Skipped):
                yield {"key": decoded.key, "source": unit.source, "error": decoded.reason}
                continue
            crops.append(decoded[0])
            keys.append(decoded[1])
            if len(crops) == model.batch_size:
                yield from _captioned(model, crops, keys, unit.source, options)
                crops, keys = [], []
        if crops:
            yield from _captioned(model, crops, keys, unit.source, options)
        if stats.failed_shards:
            yield {"source": unit.source, "error": "could not be read to its end"}


def _captioned(model, crops: list, keys: list, source: str, options: dict) -> Iterator[dict]:
    for key, text in zip(keys, model.caption(np.stack(crops), **options), strict=True):
        yield {"key": key, "source": source, "caption": text}

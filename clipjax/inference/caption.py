"""`clipjax caption`: a CoCa model's captions for every image of a folder or shard
spec, streamed in batches (unreadable images are reported, not captioned)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from clipjax.data.shards import DataStats
from clipjax.data.skips import Skipped
from clipjax.inference.embed import (
    DEFAULT_IMAGE_KEYS,
    decoded_batches,
    image_decoder,
    image_units,
)

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
    decoder = image_decoder(model, image_keys, max_pixels)
    options = dict(beams=beams, max_len=max_len, length_penalty=length_penalty)
    for unit in image_units(images, PER_UNIT):
        stats = DataStats()
        for item in decoded_batches(unit, decoder, workers, model.batch_size, stats):
            if isinstance(item, Skipped):
                yield {"key": item.key, "source": unit.source, "error": item.reason}
                continue
            yield from _captioned(model, *item, unit.source, options)
        if stats.failed_shards:
            yield {"source": unit.source, "error": "could not be read to its end"}


def _captioned(model, crops: list, keys: list, source: str, options: dict) -> Iterator[dict]:
    for key, text in zip(keys, model.caption(np.stack(crops), **options), strict=True):
        yield {"key": key, "source": source, "caption": text}

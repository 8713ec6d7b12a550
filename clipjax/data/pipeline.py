"""Raw samples -> decoded, transformed (image, caption) pairs, in order.

Decoding runs inline or in worker processes (`spawn`, so no forked JAX
state). Work goes out in chunks and comes back in submission order, so the
batches are the same whatever the worker count, and at most `workers * 4`
chunks are in flight. Each sample's random crop and augmentations are seeded by
its position in the stream, never by which worker decoded it.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from clipjax.data.augment import TextAugment
from clipjax.data.decode import BadSample, ImageTransform, read_image, read_text
from clipjax.data.skips import Skipped

log = logging.getLogger(__name__)

CHUNK = 16  # samples per task sent to a worker


@dataclass(frozen=True)
class PairDecoder:
    """Decodes one raw sample into (uint8 HWC crop, caption) or raises BadSample."""

    transform: ImageTransform
    image_keys: tuple[str, ...]
    text_key: str
    max_pixels: int
    seed: tuple[int, ...]
    text_augment: TextAugment = field(default_factory=TextAugment)

    def members(self) -> set[str]:
        return {*self.image_keys, self.text_key.split(".")[0], "__key__", "__url__"}

    def __call__(self, index: int, sample: dict) -> tuple[np.ndarray, str]:
        text = read_text(sample, self.text_key)
        image = read_image(sample, self.image_keys, self.max_pixels)
        rng = np.random.default_rng((*self.seed, index))
        if self.text_augment.active:  # its own generator: the image draws stay as without it
            text = self.text_augment(text, np.random.default_rng((*self.seed, index, 1)))
        return self.transform.crop(image, rng), text


Decoded = tuple[int, tuple[np.ndarray, str] | Skipped]  # (stream index, pair or why not)

_worker_decoder: PairDecoder | None = None


def _init_worker(decoder: PairDecoder) -> None:
    global _worker_decoder
    _worker_decoder = decoder


def _decode_chunk(chunk: list[tuple[int, dict]], decoder: PairDecoder | None = None) -> list:
    decoder = decoder or _worker_decoder
    out: list[Decoded] = []
    for index, sample in chunk:
        try:
            out.append((index, decoder(index, sample)))
        except BadSample as exc:
            out.append(
                (index, Skipped(str(sample.get("__url__")), str(sample.get("__key__")), str(exc)))
            )
    return out


class OrderedDecoder:
    """Maps `decoder` over (index, sample) pairs inline or in `workers` processes."""

    def __init__(self, decoder: PairDecoder, workers: int):
        if workers < 0:
            raise ValueError(f"data.workers={workers}; expected 0 (inline) or more")
        self.decoder = decoder
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, samples: Iterable[tuple[int, dict]]) -> Iterator[Decoded]:
        keep = self.decoder.members()
        chunks = _chunks(
            ((i, {k: v for k, v in s.items() if k in keep}) for i, s in samples), CHUNK
        )
        if self.workers == 0:
            for chunk in chunks:
                yield from _decode_chunk(chunk, self.decoder)
            return
        self._pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.decoder,),
        )
        pending: deque[Future] = deque()
        try:
            for chunk in chunks:
                pending.append(self._pool.submit(_decode_chunk, chunk))
                if len(pending) >= 4 * self.workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

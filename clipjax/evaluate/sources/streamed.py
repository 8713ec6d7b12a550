"""An evaluation set read in batches: what every source opens, before anything is
decoded. `collect()` gives the whole set in memory (an `EvalSet`); `local_batches`
decodes this process's share in order, a batch at a time, so host memory holds one
batch of crops whatever the set's size.

Process p of P decodes the samples whose position in the set's order is p modulo P;
each decoded crop carries that position, so results gathered from all processes are
put back in the set's order. Skips are summarised per shard, as in `collect`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from clipjax.data.pipeline import OrderedDecoder
from clipjax.data.skips import ShardSkips, Skipped
from clipjax.evaluate.sources.evalset import EvalSet, classification_set, collect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalBatch:
    """Up to `rows` decoded samples of this process: crops, targets, set positions."""

    crops: np.ndarray  # uint8 [n, H, W, 3]
    targets: list  # labels (int) or caption tuples
    positions: np.ndarray  # int64 [n]


@dataclass(frozen=True)
class StreamedSet:
    """A classification (`classnames`, `templates`) or retrieval set, not yet read.
    `items()` gives the raw samples in the set's order, afresh at each call."""

    name: str
    kind: str  # "classification" | "retrieval"
    items: Callable[[], Iterable]
    decoder: Callable
    where: str
    workers: int = 0
    classnames: tuple[str, ...] | None = None
    templates: tuple[str, ...] | None = None

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        size = self.decoder.transform.size
        return (size, size, 3)

    def collect(self) -> EvalSet:
        """The whole set decoded into host memory."""
        images, targets, skipped = collect(self.items(), self.decoder, self.workers, self.where)
        if self.kind == "retrieval":
            return EvalSet(self.name, images, None, None, None, tuple(targets), skipped)
        return classification_set(
            self.name, images, targets, self.classnames, self.templates, skipped
        )

    def first(self, count: int) -> StreamedSet:
        """The set cut to its first `count` samples (readable or not); 0: all of it."""
        if not count:
            return self
        return dataclasses.replace(self, items=lambda: itertools.islice(self.items(), count))

    def check_readable(self, samples: int = 32) -> None:
        """Decodes the first `samples` samples and raises if none can be: a wrong member
        key or layout fails when the eval is set up, not when it first runs."""
        collect(itertools.islice(self.items(), samples), self.decoder, 0, self.where)

    def local_batches(
        self, rows: int, process_index: int = 0, process_count: int = 1
    ) -> Iterator[LocalBatch]:
        """This process's samples decoded in order, `rows` at a time (the last batch
        shorter). Logs the skips per shard at the end."""
        skips = ShardSkips()
        mine = (
            (i, sample)
            for i, sample in enumerate(self.items())
            if i % process_count == process_index
        )
        crops, targets, positions = [], [], []
        for position, result in OrderedDecoder(self.decoder, self.workers)(mine):
            if isinstance(result, Skipped):
                skips.add(result)
                continue
            crops.append(result[0])
            targets.append(result[1])
            positions.append(position)
            if len(crops) == rows:
                yield LocalBatch(np.stack(crops), targets, np.asarray(positions, np.int64))
                crops, targets, positions = [], [], []
        if crops:
            yield LocalBatch(np.stack(crops), targets, np.asarray(positions, np.int64))
        for line in skips.lines():
            log.warning("%s: %s", self.where, line)
        if skips.total:
            log.warning("%s: %d unreadable sample(s) skipped here", self.where, skips.total)

    def check_labels(self, labels: np.ndarray) -> None:
        """Labels gathered from a stream are in range of the class names."""
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classnames)):
            raise ValueError(
                f"{self.name}: labels span {labels.min()}..{labels.max()} "
                f"but there are {len(self.classnames)} class names"
            )

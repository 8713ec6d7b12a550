"""The one type every eval source returns, and what the sources share: class names
and templates, the sample decoder, and ordered decoding with counted skips.

Images are decoded with `clipjax.data.decode` (allow-listed formats, a pixel
limit) and cropped by the eval `ImageTransform`; they stay uint8 (a quarter of
the host memory of floats) and the jitted encoder normalises them on the device.
Unreadable samples are skipped, logged and counted in `EvalSet.skipped`; a set
with no readable sample, or a shard that cannot be read at all, is an error
(an evaluation silently run on part of its set would report a wrong number).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipjax.data.decode import BadSample, ImageTransform, eval_transform, read_image, read_label
from clipjax.data.pipeline import OrderedDecoder
from clipjax.data.skips import ShardSkips, Skipped
from clipjax.evaluate.assets import (
    bundled_classnames,
    bundled_name,
    bundled_templates,
    check_templates,
    read_lines,
)
from clipjax.evaluate.fields import eval_field

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of a {c}."
DEFAULT_MAX_PIXELS = 64_000_000  # as configs/default.py data.max_pixels
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


@dataclass(frozen=True)
class SourceContext:
    """What every source's loader takes from the run besides its eval entry: the eval
    transform, the pixel limit and the digits cache. Member keys are the entry's own
    (`image_members`): an eval set's layout is not the training data's."""

    transform: ImageTransform
    max_pixels: int
    image_size: int
    cache_dir: str

    @classmethod
    def from_data_config(cls, data) -> SourceContext:
        transform = eval_transform(data)
        return cls(transform, data.max_pixels, data.image_size, data.cache_dir)

    @staticmethod
    def templates(entry) -> tuple[str, ...] | None:
        """`entry.templates_file`'s lines, or None (the set's own or bundled apply)."""
        path = eval_field(entry, "templates_file")
        return read_lines(Path(path)) if path else None

    @staticmethod
    def classnames(entry) -> tuple[str, ...] | None:
        path = eval_field(entry, "classnames_file")
        return read_lines(Path(path)) if path else None


@dataclass
class EvalSet:
    """A loaded evaluation set: classification (`labels`, `classnames`,
    `templates`) or retrieval (`captions`, one tuple of >= 1 captions per image)."""

    name: str
    images: np.ndarray  # uint8 [N, H, W, 3] eval crops, normalised by the encoder
    labels: np.ndarray | None  # int64 [N] for classification sets
    classnames: tuple[str, ...] | None
    templates: tuple[str, ...] | None
    captions: tuple[tuple[str, ...], ...] | None
    skipped: int  # unreadable samples skipped

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f"{self.name}: images of shape {self.images.shape}; expected [N,H,W,3]"
            )
        if self.labels is None and self.captions is None:
            raise ValueError(f"{self.name}: neither labels nor captions")
        if self.labels is not None:
            if self.labels.shape != (n,):
                raise ValueError(f"{self.name}: {self.labels.shape} labels for {n} images")
            if not self.classnames or not self.templates:
                raise ValueError(
                    f"{self.name}: a classification set needs classnames and templates"
                )
            self.templates = check_templates(self.templates, self.name)
            low, high = (int(self.labels.min()), int(self.labels.max())) if n else (0, 0)
            if low < 0 or high >= len(self.classnames):
                raise ValueError(
                    f"{self.name}: labels span {low}..{high} "
                    f"but there are {len(self.classnames)} class names"
                )
        if self.captions is not None:
            if len(self.captions) != n:
                raise ValueError(f"{self.name}: {len(self.captions)} caption lists for {n} images")
            if any(not c for c in self.captions):
                raise ValueError(f"{self.name}: an image without captions")

    @property
    def kind(self) -> str:
        return "classification" if self.labels is not None else "retrieval"

    def __len__(self) -> int:
        return len(self.images)


# -- class names and templates -------------------------------------------------


def resolve_templates(
    name: str,
    explicit: Sequence[str] | None = None,
    file_templates: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """explicit > the set's own file > bundled for `name` > `("a photo of a {c}.",)`."""
    if explicit is not None:
        return check_templates(explicit, f"{name}: templates given")
    if file_templates is not None:
        return check_templates(file_templates, f"{name}: templates file")
    if bundled_name(name) is not None:
        return bundled_templates(name)
    return (DEFAULT_TEMPLATE,)


def optional_lines(path: Path) -> tuple[str, ...] | None:
    return read_lines(path) if path.is_file() else None


def classnames_or_bundled(
    name: str, explicit: Sequence[str] | None, found: Sequence[str] | None, where: str
) -> tuple[str, ...]:
    if explicit is not None:
        return tuple(explicit)
    if found is not None:
        return tuple(found)
    if bundled_name(name) is not None:
        return bundled_classnames(name)
    raise FileNotFoundError(
        f"{where}: no class names: pass classnames=, write {CLASSNAMES_FILE}, or name a bundled set"
    )


# -- decoding ------------------------------------------------------------------


@dataclass(frozen=True)
class SampleDecoder:
    """Raw webdataset sample -> (uint8 crop, label or captions); picklable for workers."""

    transform: ImageTransform
    image_keys: tuple[str, ...]
    max_pixels: int
    target: str  # "cls" (label) or "txt" (captions)

    def members(self) -> set[str]:
        return {*self.image_keys, self.target, "__key__", "__url__"}

    def __call__(self, index: int, sample: dict) -> tuple[np.ndarray, Any]:
        target = read_label(sample) if self.target == "cls" else read_captions(sample)
        image = read_image(sample, self.image_keys, self.max_pixels)
        return self.transform.crop(image, np.random.default_rng((0, index))), target


def read_captions(sample: dict, key: str = "txt") -> tuple[str, ...]:
    """The non-blank lines of a `.txt` member: one caption per line (CLIP_benchmark)."""
    data = sample.get(key)
    if data is None:
        raise BadSample(f"sample {sample.get('__key__')!r} has no .{key} member")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadSample(f"sample {sample.get('__key__')!r}: captions not UTF-8: {exc}") from exc
    captions = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not captions:
        raise BadSample(f"sample {sample.get('__key__')!r} has no caption")
    return captions


def collect(items: Iterable, decoder, workers: int, where: str) -> tuple[np.ndarray, list, int]:
    """Decodes every item in order: (uint8 crops, targets, number skipped). Skips are
    logged as one line per shard with counts by reason, never one per sample."""
    crops, targets, skips = [], [], ShardSkips()
    members = MemberCounter()
    for _, result in OrderedDecoder(decoder, workers)(enumerate(members.watch(items))):
        if isinstance(result, Skipped):
            skips.add(result)
            continue
        crops.append(result[0])
        targets.append(result[1])
    for line in skips.lines():
        log.warning("%s: %s", where, line)
    if not crops:
        summary = "; ".join(skips.lines()[:3])
        raise ValueError(
            f"{where}: no readable sample ({skips.total} unreadable skipped): {summary}. "
            f"Members of the first samples: {members}"
        )
    if skips.total:
        log.warning("%s: %d unreadable sample(s) skipped, %d kept", where, skips.total, len(crops))
    return np.stack(crops), targets, skips.total


class MemberCounter:
    """The member names (extensions) of the first `limit` samples a pass reads, for the
    message when none can be decoded (a wrong image key shows here)."""

    def __init__(self, limit: int = 64):
        self.limit = limit
        self.seen = 0
        self.counts: Counter[str] = Counter()

    def watch(self, items: Iterable) -> Iterator:
        for item in items:
            if self.seen < self.limit and isinstance(item, dict):
                self.seen += 1
                self.counts.update(k for k in item if not k.startswith("__"))
            yield item

    def __str__(self) -> str:
        return ", ".join(f"{name} ({n})" for name, n in sorted(self.counts.items())) or "none"


def classification_set(
    name: str,
    images: np.ndarray,
    labels: list,
    classnames: tuple[str, ...],
    templates: tuple[str, ...],
    skipped: int,
) -> EvalSet:
    return EvalSet(name, images, np.asarray(labels, np.int64), classnames, templates, None, skipped)

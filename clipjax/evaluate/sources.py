"""Evaluation sets from disk, as one `EvalSet` type whatever the source.

Three sources (TFDS in `tfds_source.py`):

- `load_clip_benchmark`: CLIP_benchmark's webdataset layout (what
  `clip_benchmark_export_wds` writes and the `djghosh/wds_*` sets on the HF hub
  hold)::

      DIR/classnames.txt                          classification only, label order
      DIR/zeroshot_classification_templates.txt   one template a line, `{c}` = class
      DIR/dataset_type.txt                        optional: classification | retrieval
      DIR/test/nshards.txt                        optional: shard count n -> 0.tar..n-1.tar
      DIR/test/*.tar                              KEY.webp|png|jpg|jpeg + KEY.cls (label)
                                                  or + KEY.txt (captions, one a line)

- `load_image_folder`: `DIR/<class>/<image>`, sorted folder names = label order.
- `load_tfds`: an already prepared TFDS dataset in array_record format, read by
  random access through `tfds` data sources (no TensorFlow needed).

Images are decoded with `clipjax.data.decode` (allow-listed formats, a pixel
limit) and cropped by the eval `ImageTransform`; they stay uint8 (a quarter of
the host memory of floats) and the jitted encoder normalises them on the device.
Unreadable samples are skipped, logged and counted in `EvalSet.skipped`; a set
with no readable sample, or a shard that cannot be read at all, is an error
(an evaluation silently run on part of its set would report a wrong number).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipjax.data.decode import (
    IMAGE_EXTENSIONS,
    BadSample,
    ImageTransform,
    read_image,
    read_label,
)
from clipjax.data.pipeline import OrderedDecoder
from clipjax.data.shards import DataStats, SampleStream, read_shard
from clipjax.data.skips import Skipped
from clipjax.evaluate.assets import (
    WORDNET_ID,
    bundled_classnames,
    bundled_name,
    bundled_templates,
    check_templates,
    read_lines,
)

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of a {c}."
DEFAULT_MAX_PIXELS = 64_000_000  # as configs/default.py data.max_pixels
CLIP_BENCHMARK_IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
DATASET_TYPE_FILE = "dataset_type.txt"

CLIP_BENCHMARK_LAYOUT = (
    f"expected CLIP_benchmark's webdataset layout: DIR/{CLASSNAMES_FILE} (classification), "
    f"DIR/{TEMPLATES_FILE}, DIR/<split>/*.tar with KEY.<webp|png|jpg|jpeg> and "
    "KEY.cls (classification) or KEY.txt (retrieval captions, one per line)"
)
IMAGE_FOLDER_LAYOUT = (
    "expected DIR/<class name>/<image>.<jpg|jpeg|png|webp>, one subfolder per class "
    f"(sorted folder names give the label order), optionally DIR/{CLASSNAMES_FILE}"
)


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


def _optional_lines(path: Path) -> tuple[str, ...] | None:
    return read_lines(path) if path.is_file() else None


def _classnames_or_bundled(
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
class _SampleDecoder:
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
    """Decodes every item in order: (uint8 crops, targets, number skipped)."""
    crops, targets, skipped = [], [], 0
    for _, result in OrderedDecoder(decoder, workers)(enumerate(items)):
        if isinstance(result, Skipped):
            skipped += 1
            log.warning("%s: skipping sample %r in %s: %s", where, *result)
            continue
        crops.append(result[0])
        targets.append(result[1])
    if not crops:
        raise ValueError(f"{where}: no readable sample ({skipped} unreadable skipped)")
    if skipped:
        log.warning("%s: %d unreadable sample(s) skipped, %d kept", where, skipped, len(crops))
    return np.stack(crops), targets, skipped


def classification_set(
    name: str,
    images: np.ndarray,
    labels: list,
    classnames: tuple[str, ...],
    templates: tuple[str, ...],
    skipped: int,
) -> EvalSet:
    return EvalSet(name, images, np.asarray(labels, np.int64), classnames, templates, None, skipped)


# -- CLIP_benchmark webdataset directories ------------------------------------


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def clip_benchmark_shards(directory: str | Path, split: str = "test") -> list[str]:
    """The split's shard paths in order: `0.tar .. n-1.tar` from `nshards.txt` when
    present, else every `*.tar` sorted numerically (`2.tar` before `10.tar`)."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; {CLIP_BENCHMARK_LAYOUT}")
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no split folder {split_dir}; {CLIP_BENCHMARK_LAYOUT}")
    count_file = split_dir / "nshards.txt"
    if count_file.is_file():
        count = int(read_lines(count_file)[0])
        shards = [split_dir / f"{i}.tar" for i in range(count)]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{count_file} says {count} shards; missing {missing[:3]}")
    else:
        shards = sorted(split_dir.glob("*.tar"), key=_natural_key)
    if not shards:
        raise FileNotFoundError(f"no {split}/*.tar shards in {root}; {CLIP_BENCHMARK_LAYOUT}")
    return [str(p) for p in shards]


def clip_benchmark_kind(directory: str | Path, shards: Sequence[str]) -> str:
    """ "classification" or "retrieval": `dataset_type.txt`, else the presence of
    `classnames.txt`, else whether the first sample has a `.cls` or a `.txt` member."""
    root = Path(directory)
    type_file = root / DATASET_TYPE_FILE
    if type_file.is_file():
        kind = read_lines(type_file)[0].lower()
        if kind not in ("classification", "retrieval"):
            raise ValueError(f"{type_file}: dataset type {kind!r} is not supported")
        return kind
    if (root / CLASSNAMES_FILE).is_file():
        return "classification"
    for shard in shards:
        sample = next(iter(read_shard(shard, DataStats())), None)
        if sample is not None:
            if "cls" in sample:
                return "classification"
            if "txt" in sample:
                return "retrieval"
            raise ValueError(
                f"{shard}: first sample has members {sorted(sample)}; neither .cls nor .txt. "
                + CLIP_BENCHMARK_LAYOUT
            )
    raise ValueError(f"no readable sample in the shards of {root}")


def load_clip_benchmark(
    directory: str | Path,
    name: str,
    transform: ImageTransform,
    split: str = "test",
    templates: Sequence[str] | None = None,
    classnames: Sequence[str] | None = None,
    image_keys: Sequence[str] = CLIP_BENCHMARK_IMAGE_KEYS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    workers: int = 0,
) -> EvalSet:
    """A CLIP_benchmark webdataset directory (see the module docstring), in shard order.

    Classification: class names from `classnames=` > `classnames.txt` > the bundled
    set `name`; templates by `resolve_templates`. Retrieval: captions from `.txt`.
    `workers` > 0 decodes in that many processes (same result).
    """
    root = Path(directory)
    shards = clip_benchmark_shards(root, split)
    kind = clip_benchmark_kind(root, shards)
    where = f"{name} ({root}/{split})"
    if kind == "retrieval" and (templates is not None or classnames is not None):
        raise ValueError(f"{where} is a retrieval set; class names and templates do not apply")
    if kind == "classification":  # resolved first: a missing file fails before decoding
        names = _classnames_or_bundled(
            name, classnames, _optional_lines(root / CLASSNAMES_FILE), str(root)
        )
        chosen = resolve_templates(name, templates, _optional_lines(root / TEMPLATES_FILE))
    stats = DataStats()
    stream = SampleStream(shards, seed=0, mode="once", shuffle_shards=False, stats=stats)
    decoder = _SampleDecoder(
        transform, tuple(image_keys), max_pixels, "cls" if kind == "classification" else "txt"
    )
    images, targets, skipped = collect(stream, decoder, workers, where)
    if stats.failed_shards:
        raise RuntimeError(
            f"{where}: {stats.failed_shards} shard(s) could not be read (see the log); "
            "refusing to evaluate on part of the set"
        )
    if kind == "retrieval":
        return EvalSet(name, images, None, None, None, tuple(targets), skipped)
    return classification_set(name, images, targets, names, chosen, skipped)


# -- image folders --------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix[1:].lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _folder_samples(root: Path, class_dirs: list[Path]) -> Iterable[dict]:
    for label, folder in enumerate(class_dirs):
        for path in _image_files(folder):
            sample = {
                "__key__": path.relative_to(root).as_posix(),
                "__url__": str(path),
                "cls": str(label).encode(),
            }
            try:
                sample[path.suffix[1:].lower()] = path.read_bytes()
            except OSError as exc:  # left without an image: counted as unreadable
                log.warning("cannot read %s: %s", path, exc)
            yield sample


def _folder_classnames(name: str, class_dirs: list[Path], root: Path) -> tuple[str, ...]:
    """Folder names with `_` as spaces; ImageNet's WordNet-id folders (n01440764, ...)
    take the bundled names of `name` when their count matches."""
    folders = [p.name for p in class_dirs]
    if not all(WORDNET_ID.match(f) for f in folders):
        return tuple(f.replace("_", " ") for f in folders)
    if bundled_name(name) is not None and len(bundled_classnames(name)) == len(folders):
        return bundled_classnames(name)
    raise ValueError(
        f"{root}: class folders are WordNet ids ({folders[0]}, ...); write "
        f"{CLASSNAMES_FILE} or name a bundled set with {len(folders)} classes (imagenet1k)"
    )


def load_image_folder(
    directory: str | Path,
    name: str,
    transform: ImageTransform,
    templates: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    classnames: Sequence[str] | None = None,
    workers: int = 0,
) -> EvalSet:
    """`DIR/<class>/<image>`: labels in sorted folder-name order; class names from
    `classnames=` > `DIR/classnames.txt` > folder names with `_` as spaces; templates
    by `resolve_templates` (a `DIR/zeroshot_classification_templates.txt` counts as
    the set's file). Images anywhere below a class folder; hidden paths ignored."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; {IMAGE_FOLDER_LAYOUT}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise FileNotFoundError(f"{root} has no class subfolders; {IMAGE_FOLDER_LAYOUT}")
    names = classnames if classnames is not None else _optional_lines(root / CLASSNAMES_FILE)
    names = tuple(names) if names is not None else _folder_classnames(name, class_dirs, root)
    if len(names) != len(class_dirs):
        raise ValueError(
            f"{root}: {len(names)} class names for {len(class_dirs)} class folders "
            f"({', '.join(p.name for p in class_dirs[:5])}, ...)"
        )
    chosen = resolve_templates(name, templates, _optional_lines(root / TEMPLATES_FILE))
    decoder = _SampleDecoder(transform, IMAGE_EXTENSIONS, max_pixels, "cls")
    where = f"{name} ({root})"
    images, labels, skipped = collect(_folder_samples(root, class_dirs), decoder, workers, where)
    return classification_set(name, images, labels, names, chosen, skipped)

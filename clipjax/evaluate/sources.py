"""Evaluation sets from disk, as one `EvalSet` type whatever the source.

Three sources:

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
limit), cropped by the eval `ImageTransform` and normalised to float32.
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
from PIL import Image

from clipjax.data.decode import (
    IMAGE_EXTENSIONS,
    BadSample,
    ImageTransform,
    load_image,
    read_image,
    read_label,
)
from clipjax.data.pipeline import OrderedDecoder
from clipjax.data.shards import DataStats, SampleStream, read_shard
from clipjax.evaluate.assets import (
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
    images: np.ndarray  # float32 [N, H, W, 3], transformed and normalised
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


def _collect(
    items: Iterable, decoder, workers: int, transform: ImageTransform, where: str
) -> tuple[np.ndarray, list, int]:
    """Decodes every item in order: (float32 images, targets, number skipped)."""
    crops, targets, skipped = [], [], 0
    for _, result in OrderedDecoder(decoder, workers)(enumerate(items)):
        if isinstance(result, str):
            skipped += 1
            log.warning("%s: %s", where, result)
            continue
        crops.append(result[0])
        targets.append(result[1])
    if not crops:
        raise ValueError(f"{where}: no readable sample ({skipped} unreadable skipped)")
    if skipped:
        log.warning("%s: %d unreadable sample(s) skipped, %d kept", where, skipped, len(crops))
    images = np.empty((len(crops), *crops[0].shape), np.float32)
    for start in range(0, len(crops), 256):
        images[start : start + 256] = transform.normalize(np.stack(crops[start : start + 256]))
    return images, targets, skipped


def _classification(
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
    images, targets, skipped = _collect(stream, decoder, workers, transform, where)
    if stats.failed_shards:
        raise RuntimeError(
            f"{where}: {stats.failed_shards} shard(s) could not be read (see the log); "
            "refusing to evaluate on part of the set"
        )
    if kind == "retrieval":
        return EvalSet(name, images, None, None, None, tuple(targets), skipped)
    return _classification(name, images, targets, names, chosen, skipped)


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
    names = (
        tuple(names) if names is not None else tuple(p.name.replace("_", " ") for p in class_dirs)
    )
    if len(names) != len(class_dirs):
        raise ValueError(
            f"{root}: {len(names)} class names for {len(class_dirs)} class folders "
            f"({', '.join(p.name for p in class_dirs[:5])}, ...)"
        )
    chosen = resolve_templates(name, templates, _optional_lines(root / TEMPLATES_FILE))
    decoder = _SampleDecoder(transform, IMAGE_EXTENSIONS, max_pixels, "cls")
    where = f"{name} ({root})"
    images, labels, skipped = _collect(
        _folder_samples(root, class_dirs), decoder, workers, transform, where
    )
    return _classification(name, images, labels, names, chosen, skipped)


# -- TFDS (array_record, random access, no TensorFlow) -------------------------


def _field(example: dict, key: str) -> Any:
    value = example
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            raise BadSample(f"example has no field {key!r}")
        value = value[part]
    return value


def array_to_image(value: Any, max_pixels: int) -> Image.Image:
    """A TFDS image (decoded uint8 [H,W,C] with C in 1,3,4, or encoded bytes) -> RGB PIL."""
    if isinstance(value, bytes | np.bytes_):
        return load_image(bytes(value), max_pixels)
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[-1] not in (3, 4))
    ):
        raise BadSample(f"image of shape {array.shape} and dtype {array.dtype}; expected uint8 HWC")
    height, width = array.shape[:2]
    if height * width > max_pixels:
        raise BadSample(f"image of {width}x{height} pixels exceeds max_pixels={max_pixels}")
    return Image.fromarray(array).convert("RGB")


def _texts(value: Any) -> tuple[str, ...]:
    if isinstance(value, bytes | np.bytes_ | str):
        value = [value]
    out = []
    for item in np.asarray(value, dtype=object).reshape(-1):
        text = item.decode("utf-8") if isinstance(item, bytes | np.bytes_) else str(item)
        if text.strip():
            out.append(text.strip())
    if not out:
        raise BadSample("example has no caption")
    return tuple(out)


@dataclass(frozen=True)
class _ExampleDecoder:
    """TFDS example (dict of numpy) -> (uint8 crop, label or captions)."""

    transform: ImageTransform
    image_key: str
    target_key: str
    captions: bool
    max_pixels: int

    def members(self) -> set[str]:
        return {self.image_key.split("/")[0], self.target_key.split("/")[0], "__error__"}

    def __call__(self, index: int, example: dict) -> tuple[np.ndarray, Any]:
        if "__error__" in example:
            raise BadSample(example["__error__"])
        value = _field(example, self.target_key)
        target = _texts(value) if self.captions else int(np.asarray(value).reshape(()))
        image = array_to_image(_field(example, self.image_key), self.max_pixels)
        return self.transform.crop(image, np.random.default_rng((0, index))), target


def _examples(source, count: int, chunk: int = 64) -> Iterable[dict]:
    """Examples 0..count-1; an example that fails to decode becomes `{"__error__": ...}`."""
    batched = hasattr(source, "__getitems__")
    for start in range(0, count, chunk):
        indices = list(range(start, min(start + chunk, count)))
        try:
            examples = source.__getitems__(indices) if batched else [source[i] for i in indices]
        except Exception:  # fall back to one by one to find the bad example(s)
            examples = None
        if examples is not None:
            yield from examples
            continue
        for i in indices:
            try:
                yield source[i]
            except Exception as exc:  # tfds raises what its decoders raise
                yield {"__error__": f"example {i}: {type(exc).__name__}: {exc}"}


def tfds_builder(name: str, data_dir: str | Path):
    """The prepared TFDS builder: `data_dir` is the dataset's version folder (with
    `dataset_info.json`), or a data_dir holding `name[/config]/version/`."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import read_only_builder

    root = Path(data_dir)
    layout = (
        "expected a TFDS dataset prepared in array_record format: "
        f"{root}/{name.split(':')[0]}/<version>/dataset_info.json, or that version folder"
    )
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; {layout}")
    if (root / "dataset_info.json").is_file():
        return tfds.builder_from_directory(root)
    try:
        return read_only_builder.builder_from_files(name, data_dir=str(root))
    except Exception as exc:  # tfds raises DatasetNotFoundError and friends
        raise FileNotFoundError(f"no prepared dataset {name!r} under {root}; {layout}") from exc


WORDNET_ID = re.compile(r"^n\d{8}$")


def load_tfds(
    name: str,
    data_dir: str | Path,
    transform: ImageTransform,
    split: str = "test",
    image_key: str = "image",
    label_key: str = "label",
    caption_key: str | None = None,
    templates: Sequence[str] | None = None,
    classnames: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limit: int | None = None,
) -> EvalSet:
    """A prepared TFDS dataset (array_record) by random access, examples in index order.

    Classification unless `caption_key` is given (a Text or a Sequence of Text; a
    `/` walks nested features, e.g. `captions/text`). Class names: `classnames=` >
    the bundled set for `name` (e.g. `imagenet2012`, whose label names are WordNet
    ids) when its size matches > the ClassLabel names with `_` as spaces.
    Templates by `resolve_templates`. `limit` keeps the first `limit` examples.
    """
    builder = tfds_builder(name, data_dir)
    if split not in builder.info.splits:
        raise FileNotFoundError(
            f"{builder.data_dir} has splits {sorted(builder.info.splits)}; no {split!r}"
        )
    try:
        source = builder.as_data_source(split=split)
    except Exception as exc:
        raise ValueError(
            f"{builder.data_dir}: cannot open {split!r} for random access ({exc}); prepare it "
            "with file_format='array_record' (or convert it: `tfds convert_format`)"
        ) from exc
    count = len(source) if limit is None else min(limit, len(source))
    where = f"{name} ({builder.data_dir}:{split})"
    captions = caption_key is not None
    decoder = _ExampleDecoder(
        transform, image_key, caption_key if captions else label_key, captions, max_pixels
    )
    if not captions:
        names = _tfds_classnames(name, builder.info.features, label_key, classnames)
        chosen = resolve_templates(name, templates, None)
    images, targets, skipped = _collect(_examples(source, count), decoder, 0, transform, where)
    if captions:
        return EvalSet(name, images, None, None, None, tuple(targets), skipped)
    return _classification(name, images, targets, names, chosen, skipped)


def _tfds_classnames(
    name: str, features, label_key: str, explicit: Sequence[str] | None
) -> tuple[str, ...]:
    if explicit is not None:
        return tuple(explicit)
    feature = features
    for part in label_key.split("/"):
        feature = feature[part]
    label_names = getattr(feature, "names", None)
    if bundled_name(name) is not None:
        bundled = bundled_classnames(name)
        if label_names is None or len(bundled) == len(label_names):
            return bundled
        log.warning(
            "%s: %d bundled class names but %d labels; using the dataset's label names",
            name,
            len(bundled),
            len(label_names),
        )
    if not label_names:
        raise ValueError(f"{name}: feature {label_key!r} is not a ClassLabel; pass classnames=")
    if all(WORDNET_ID.match(n) for n in label_names):
        raise ValueError(
            f"{name}: label names are WordNet ids ({label_names[0]}, ...); pass classnames="
        )
    return tuple(n.replace("_", " ") for n in label_names)


# -- kept for clipjax/evaluate/runner.py until it moves to load_clip_benchmark --


@dataclass(frozen=True)
class ZeroShotSet:
    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    shard_urls: tuple[str, ...]


def load_clip_benchmark_dir(directory: str | Path, name: str, split: str = "test") -> ZeroShotSet:
    """Names, templates and shard list only (no decoding); `load_clip_benchmark`
    is the full loader."""
    root = Path(directory)
    shards = tuple(clip_benchmark_shards(root, split))
    names = read_lines(root / CLASSNAMES_FILE)
    templates = check_templates(read_lines(root / TEMPLATES_FILE), str(root))
    return ZeroShotSet(name, names, templates, shards)

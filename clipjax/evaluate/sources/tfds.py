"""Evaluation sets from prepared TFDS datasets (array_record format), read by random
access through `tfds` data sources: no TensorFlow needed."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipjax.data.decode import BadSample, ImageTransform, load_image
from clipjax.evaluate.assets import WORDNET_ID, bundled_classnames, bundled_name
from clipjax.evaluate.fields import eval_field
from clipjax.evaluate.sources.evalset import (
    DEFAULT_MAX_PIXELS,
    EvalSet,
    SourceContext,
    resolve_templates,
)
from clipjax.evaluate.sources.streamed import StreamedSet

log = logging.getLogger(__name__)


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


def open_tfds(
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
) -> StreamedSet:
    """A prepared TFDS dataset (array_record) by random access, examples in index order,
    not yet read.

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
    if captions:
        return StreamedSet(name, "retrieval", lambda: _examples(source, count), decoder, where)
    names = _tfds_classnames(name, builder.info.features, label_key, classnames)
    chosen = resolve_templates(name, templates, None)
    return StreamedSet(
        name,
        "classification",
        lambda: _examples(source, count),
        decoder,
        where,
        classnames=names,
        templates=chosen,
    )


def load_tfds(*args, **kwargs) -> EvalSet:
    """`open_tfds(...)` read into memory."""
    return open_tfds(*args, **kwargs).collect()


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


def load(name: str, entry, ctx: SourceContext, split: str) -> StreamedSet:
    """`evals.NAME` with `source="tfds"`: its `dataset_name` under its `dataset_dir`."""
    return open_tfds(
        eval_field(entry, "dataset_name"),
        eval_field(entry, "dataset_dir"),
        ctx.transform,
        split,
        eval_field(entry, "image_key"),
        eval_field(entry, "label_key"),
        eval_field(entry, "caption_key") or None,
        ctx.templates(entry),
        ctx.classnames(entry),
        ctx.max_pixels,
        eval_field(entry, "limit") or None,
    )

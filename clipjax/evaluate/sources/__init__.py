"""Eval sources by name: one loader module each, and the entry fields each reads.

- `digits`: the held-out digits (`clip_benchmark.load_digits`), built and cached;
- `clip_benchmark`: CLIP_benchmark's webdataset directories (`clip_benchmark.py`);
- `image_folder`: `DIR/<class>/<image>` (`image_folder.py`);
- `tfds`: prepared TFDS datasets in array_record format (`tfds.py`);
- `shards`: held-out training-style shards for `kind="contrastive_loss"`, read as
  batches by `clipjax.evaluate.heldout` (not an `EvalSet`: no loader here).

This module imports no loader: the config checks read the table, and `load_split`
imports a source's module when it is first used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# CLIP_benchmark's image members, in its order: the default of `image_members`.
CLIP_BENCHMARK_IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")


@dataclass(frozen=True)
class EvalSource:
    loader: str  # "module:function", called as loader(name, entry, ctx, split); "": none
    fields: tuple[str, ...] = ()  # entry fields this source reads besides the common ones
    needs: tuple[str, ...] = ()  # of those, the ones that may not be empty


SOURCES = {
    "digits": EvalSource("clipjax.evaluate.sources.clip_benchmark:load_digits"),
    "clip_benchmark": EvalSource(
        "clipjax.evaluate.sources.clip_benchmark:load",
        ("dataset_dir", "dataset_name", "image_members"),
        ("dataset_dir",),
    ),
    "image_folder": EvalSource(
        "clipjax.evaluate.sources.image_folder:load",
        ("dataset_dir", "dataset_name"),
        ("dataset_dir",),
    ),
    "tfds": EvalSource(
        "clipjax.evaluate.sources.tfds:load",
        ("dataset_dir", "dataset_name", "image_key", "label_key", "caption_key", "limit"),
        ("dataset_dir", "dataset_name"),
    ),
    "shards": EvalSource("", ("shards",), ("shards",)),
}
# The kinds that read a source that is not an EvalSet, and that source.
BATCH_KINDS = {"contrastive_loss": "shards"}


def load_split(name: str, entry, ctx, split: str):
    """One split of the eval entry `evals.<name>` as an `EvalSet`."""
    if entry.source not in SOURCES:
        raise ValueError(f"evals.{name}.source={entry.source!r}; expected one of {tuple(SOURCES)}")
    if not SOURCES[entry.source].loader:
        raise ValueError(f"evals.{name}.source={entry.source!r} is read as batches, not a set")
    module, function = SOURCES[entry.source].loader.split(":")
    return getattr(importlib.import_module(module), function)(name, entry, ctx, split)

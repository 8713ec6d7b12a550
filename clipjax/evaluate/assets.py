"""Class names and zero-shot templates shipped with clipjax (`clipjax/evaluate/data/`).

Files are plain text, one entry per line, class names in label order; templates
use `{c}` for the class name. Where each list comes from: `data/README.md`.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

# CLIP_benchmark's English lists for the rest (its dataset names; `data/README.md`)
CLIP_BENCHMARK_SETS = (
    "caltech101", "clevr_count_all", "country211", "diabetic_retinopathy", "dmlab", "eurosat",
    "fer2013", "flowers", "gtsrb", "kitti_closest_vehicle_distance", "mnist", "pcam", "pets",
    "svhn",
)  # fmt: skip
BUNDLED = ("imagenet1k", "cifar10", "cifar100", "digits", *CLIP_BENCHMARK_SETS)

# Other names for the bundled label sets: TFDS builders whose labels are the
# same classes in the same order (tfds `imagenet2012` labels are WordNet ids).
ALIASES = {
    "imagenet": "imagenet1k",
    "imagenet-1k": "imagenet1k",
    "imagenet2012": "imagenet1k",
    "imagenet_v2": "imagenet1k",
    "imagenetv2": "imagenet1k",
    "imagenet_sketch": "imagenet1k",
}

PLACEHOLDER = "{c}"


WORDNET_ID = re.compile(r"^n\d{8}$")  # ImageNet's synset folder and label names


def bundled_name(name: str) -> str | None:
    """The bundled set `name` refers to, or None.

    Accepts TFDS-style names: `cifar10:3.0.2` and `imagenet_v2/matched-frequency`
    both resolve (version and config are dropped), as do the `ALIASES`.
    """
    base = name.split(":", 1)[0].split("/", 1)[0].strip().lower()
    base = ALIASES.get(base, base)
    return base if base in BUNDLED else None


def _data_file(filename: str) -> Traversable:
    return resources.files("clipjax.evaluate").joinpath("data", filename)


def _bundled(name: str, kind: str) -> tuple[str, ...]:
    key = bundled_name(name)
    if key is None:
        raise KeyError(f"no bundled {kind} for {name!r}; bundled sets: {', '.join(BUNDLED)}")
    return _read_bundled(f"{key}_{kind}.txt")


@functools.cache
def _read_bundled(filename: str) -> tuple[str, ...]:
    return read_lines(_data_file(filename))


def bundled_classnames(name: str) -> tuple[str, ...]:
    """Class names of a bundled set, in label order (KeyError if not bundled)."""
    return _bundled(name, "classnames")


def bundled_templates(name: str) -> tuple[str, ...]:
    """Zero-shot templates (with `{c}`) of a bundled set (KeyError if not bundled)."""
    return check_templates(_bundled(name, "templates"), f"bundled templates of {name!r}")


def read_lines(path: str | os.PathLike | Traversable) -> tuple[str, ...]:
    """The stripped, non-blank lines of a UTF-8 text file.

    FileNotFoundError if it does not exist, ValueError if it has no entry.
    """
    if isinstance(path, str | os.PathLike):
        path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a text file, one entry a line)")
    lines = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    lines = tuple(line for line in lines if line)
    if not lines:
        raise ValueError(f"{path} has no entries (only blank lines)")
    return lines


def check_templates(templates: Iterable[str], where: str) -> tuple[str, ...]:
    """Returns `templates` as a tuple; ValueError naming those without `{c}`, or if empty."""
    templates = tuple(templates)
    if not templates:
        raise ValueError(f"{where}: no templates")
    bad = [t for t in templates if not isinstance(t, str) or PLACEHOLDER not in t]
    if bad:
        shown = ", ".join(repr(t) for t in bad[:5]) + (
            f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        )
        raise ValueError(
            f"{where}: {len(bad)} template(s) without the {PLACEHOLDER!r} placeholder "
            f"for the class name: {shown}"
            + (" (write {c} where '{}' is)" if any("{}" in str(t) for t in bad) else "")
        )
    return templates

"""CLIP_benchmark's webdataset layout (what `clip_benchmark_export_wds` writes and the
`djghosh/wds_*` sets on the HF hub hold)::

    DIR/classnames.txt                          classification only, label order
    DIR/zeroshot_classification_templates.txt   one template a line, `{c}` = class
    DIR/dataset_type.txt                        optional: classification | retrieval
    DIR/test/nshards.txt                        optional: shard count n -> 0.tar..n-1.tar
    DIR/test/*.tar                              KEY.webp|png|jpg|jpeg + KEY.cls (label)
                                                or + KEY.txt (captions, one a line)

The `digits` source is this layout too, built from scikit-learn's digits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from clipjax.data.decode import ImageTransform, parse_keys
from clipjax.data.shards import DataStats, SampleStream, read_shard
from clipjax.evaluate.assets import read_lines
from clipjax.evaluate.fields import eval_field
from clipjax.evaluate.sources import CLIP_BENCHMARK_IMAGE_KEYS
from clipjax.evaluate.sources.evalset import (
    CLASSNAMES_FILE,
    DEFAULT_MAX_PIXELS,
    TEMPLATES_FILE,
    EvalSet,
    SampleDecoder,
    SourceContext,
    classnames_or_bundled,
    optional_lines,
    resolve_templates,
)
from clipjax.evaluate.sources.streamed import StreamedSet

DATASET_TYPE_FILE = "dataset_type.txt"
CLIP_BENCHMARK_LAYOUT = (
    f"expected CLIP_benchmark's webdataset layout: DIR/{CLASSNAMES_FILE} (classification), "
    f"DIR/{TEMPLATES_FILE}, DIR/<split>/*.tar with KEY.<webp|png|jpg|jpeg> and "
    "KEY.cls (classification) or KEY.txt (retrieval captions, one per line)"
)


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


def open_clip_benchmark(
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
) -> StreamedSet:
    """A CLIP_benchmark webdataset directory (see the module docstring), in shard order,
    not yet read.

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
    names = chosen = None
    if kind == "classification":  # resolved first: a missing file fails before decoding
        names = classnames_or_bundled(
            name, classnames, optional_lines(root / CLASSNAMES_FILE), str(root)
        )
        chosen = resolve_templates(name, templates, optional_lines(root / TEMPLATES_FILE))
    decoder = SampleDecoder(
        transform, tuple(image_keys), max_pixels, "cls" if kind == "classification" else "txt"
    )

    def items() -> Iterator[dict]:
        stats = DataStats()
        yield from SampleStream(shards, seed=0, mode="once", shuffle_shards=False, stats=stats)
        if stats.failed_shards:
            raise RuntimeError(
                f"{where}: {stats.failed_shards} shard(s) could not be read (see the log); "
                "refusing to evaluate on part of the set"
            )

    return StreamedSet(name, kind, items, decoder, where, workers, names, chosen)


def load_clip_benchmark(*args, **kwargs) -> EvalSet:
    """`open_clip_benchmark(...)` read into memory."""
    return open_clip_benchmark(*args, **kwargs).collect()


def load(name: str, entry, ctx: SourceContext, split: str) -> StreamedSet:
    """`evals.NAME` with `source="clip_benchmark"`: its `dataset_dir`, decoding the
    entry's `image_members` (CLIP_benchmark's order by default, whatever the training
    data's `image_key`)."""
    return open_clip_benchmark(
        eval_field(entry, "dataset_dir"),
        eval_field(entry, "dataset_name") or name,
        ctx.transform,
        split,
        ctx.templates(entry),
        ctx.classnames(entry),
        parse_keys(eval_field(entry, "image_members")),
        ctx.max_pixels,
    )


def load_digits(name: str, entry, ctx: SourceContext, split: str) -> StreamedSet:
    """`evals.NAME` with `source="digits"`: the held-out digits, built once and cached."""
    from clipjax.data.writer import build_digits_shards

    shards = build_digits_shards(ctx.cache_dir or None, image_size=ctx.image_size)
    root = shards.retrieval_dir if entry.kind == "retrieval" else shards.zeroshot_dir
    return open_clip_benchmark(
        root,
        "digits",
        ctx.transform,
        split,
        ctx.templates(entry),
        ctx.classnames(entry),
        max_pixels=ctx.max_pixels,
    )

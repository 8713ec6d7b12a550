"""`clipjax embed`: a whole dataset's embeddings, streamed, as `.npy` shards.

The input is cut into units: one per webdataset shard, or `per_unit` files of an
image folder (`per_unit` lines of a text file). Each unit becomes
`OUT/<kind>_emb/NNNNN.npy` (float16 or float32, one row per readable item), with
`NNNNN.jsonl` (each row's key and source) and `NNNNN.stats.json` (rows, skipped
items and why) beside it; the `.npy` is renamed into place last, so a unit whose
`.npy` exists is finished and a rerun skips it. `manifest.json` records the units,
the model and the dtype: a rerun on other input is refused, not mixed in.

Processes split the units round-robin (unit i goes to process i mod count); each
embeds on its own devices. Host memory holds one unit's embeddings and the decode
queue, whatever the dataset's size. A shard that cannot be read to its end leaves
its unit unfinished (named in the result), and the other units are still written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipjax.data.decode import ImageTransform, eval_transform, image_files, read_image
from clipjax.data.pipeline import OrderedDecoder
from clipjax.data.shards import DataStats, expand_urls, read_shard
from clipjax.data.skips import Skipped

log = logging.getLogger(__name__)

DTYPES = ("float16", "float32")
DEFAULT_IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")
SHOWN_REASONS = 5  # skip reasons kept per unit in its stats file


@dataclass(frozen=True)
class ImageDecoder:
    """Raw sample -> (uint8 eval crop, key); picklable for worker processes."""

    transform: ImageTransform
    image_keys: tuple[str, ...]
    max_pixels: int

    def members(self) -> set[str]:
        return {*self.image_keys, "__key__", "__url__"}

    def __call__(self, index: int, sample: dict) -> tuple[np.ndarray, str]:
        image = read_image(sample, self.image_keys, self.max_pixels)
        return self.transform.crop(image, np.random.default_rng((0, index))), sample["__key__"]


def image_decoder(model, image_keys: tuple[str, ...], max_pixels: int) -> ImageDecoder:
    """The decoder that crops images as `model`'s eval does."""
    transform = eval_transform(model.config.data, model.image_size)
    return ImageDecoder(transform, tuple(image_keys), max_pixels)


@dataclass(frozen=True)
class Unit:
    """One output shard's input: a shard URL, a run of folder files or of text lines."""

    index: int
    source: str
    files: tuple[str, ...] = ()  # folder units: their files, relative to `root`
    root: str = ""
    lines: tuple[int, int] = (0, 0)  # text units: [first, end) line numbers

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


@dataclass
class UnitResult:
    rows: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    failed: str = ""  # why the unit's input could not be read to its end

    def skip(self, why: Skipped | str) -> None:
        self.skipped += 1
        if len(self.reasons) < SHOWN_REASONS:
            self.reasons.append(str(why))


@dataclass
class EmbedReport:
    written: list[str] = field(default_factory=list)  # units finished by this call
    already: list[str] = field(default_factory=list)  # units a previous call finished
    failed: dict[str, str] = field(default_factory=dict)  # unit source -> why
    rows: int = 0
    skipped: int = 0


def image_units(images: str, per_unit: int) -> list[Unit]:
    """A folder's image files in runs of `per_unit`, or one unit per shard of a spec
    (or of a folder that holds `.tar` shards and no images)."""
    folder = Path(images)
    if folder.is_dir():
        files = [p.relative_to(folder).as_posix() for p in image_files(folder)]
        shards = sorted(str(p) for p in folder.glob("*.tar"))
        if not files and shards:  # a folder of webdataset shards: one unit each
            return [Unit(i, url) for i, url in enumerate(shards)]
        if not files:
            raise ValueError(f"{folder} holds no .jpg/.jpeg/.png/.webp image and no .tar shard")
        return [
            Unit(i, f"{folder}: files {start}..{start + len(chunk) - 1}", chunk, str(folder))
            for i, start in enumerate(range(0, len(files), per_unit))
            for chunk in [tuple(files[start : start + per_unit])]
        ]
    urls = expand_urls(images)
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        )
        raise FileNotFoundError(f"images {images!r}: no such folder or shard: {shown}")
    return [Unit(i, url) for i, url in enumerate(urls)]


def text_units(path: str, per_unit: int) -> tuple[list[Unit], list[str]]:
    texts = Path(path).read_text(encoding="utf-8").splitlines()
    if not any(t.strip() for t in texts):
        raise ValueError(f"{path} holds no text (one text per line)")
    units = [
        Unit(
            i,
            f"{path}: lines {start + 1}..{min(start + per_unit, len(texts))}",
            lines=(start, min(start + per_unit, len(texts))),
        )
        for i, start in enumerate(range(0, len(texts), per_unit))
    ]
    return units, texts


def unit_samples(unit: Unit, stats: DataStats) -> Iterator[dict]:
    if not unit.files:
        yield from read_shard(unit.source, stats)
        return
    root = Path(unit.root)
    for name in unit.files:
        path = root / name
        sample = {"__key__": name, "__url__": str(path)}
        try:
            sample[path.suffix[1:].lower()] = path.read_bytes()
        except OSError as exc:  # left without an image: skipped as unreadable
            log.warning("cannot read %s: %s", path, exc)
        yield sample


def decoded_batches(
    unit: Unit, decoder: ImageDecoder, workers: int, size: int, stats: DataStats
) -> Iterator[Skipped | tuple[list, list]]:
    """The unit's images decoded in order, as `(crops, keys)` batches of `size` (the
    last may be shorter), and each unreadable one as its `Skipped` where it falls."""
    crops, keys = [], []
    for _, decoded in OrderedDecoder(decoder, workers)(enumerate(unit_samples(unit, stats))):
        if isinstance(decoded, Skipped):
            yield decoded
            continue
        crops.append(decoded[0])
        keys.append(decoded[1])
        if len(crops) == size:
            yield crops, keys
            crops, keys = [], []
    if crops:
        yield crops, keys


class Writer:
    """Writes each unit's three files under `out/<kind>_emb/`, the `.npy` last."""

    def __init__(self, out: Path, kind: str, dtype: str, width: int):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}; expected one of {DTYPES}")
        self.folder = out / f"{kind}_emb"
        self.dtype = dtype
        self.width = width  # an empty unit's array is [0, width]

    def claim(self, manifest: dict) -> None:
        """Creates the folder and its manifest, or checks a previous call's manifest."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "manifest.json"
        if path.exists():
            previous = json.loads(path.read_text())
            if previous != manifest:
                changed = sorted(k for k in manifest if previous.get(k) != manifest[k])
                raise ValueError(
                    f"{self.folder} holds embeddings of another run ({', '.join(changed)} "
                    "differ); give a new --out, or delete it to start again"
                )
            return
        _replace(path, json.dumps(manifest, indent=1))

    def finished(self, unit: Unit) -> bool:
        return (self.folder / f"{unit.name}.npy").exists()

    def write(self, unit: Unit, rows: np.ndarray, index: list[dict], result: UnitResult) -> None:
        stem = self.folder / unit.name
        lines = "".join(json.dumps(entry) + "\n" for entry in index)
        _replace(stem.with_suffix(".jsonl"), lines)
        stats = {
            "source": unit.source,
            "rows": result.rows,
            "skipped": result.skipped,
            "skip_reasons": result.reasons,
        }
        _replace(stem.with_suffix(".stats.json"), json.dumps(stats, indent=1))
        partial = stem.with_suffix(".npy.partial")
        with open(partial, "wb") as f:
            np.save(f, rows.astype(self.dtype))
        os.replace(partial, stem.with_suffix(".npy"))


def _replace(path: Path, text: str) -> None:
    """Writes `text` to `path` atomically (processes may write the same manifest)."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _mine(units: list[Unit], process_index: int, process_count: int) -> list[Unit]:
    return [u for u in units if u.index % process_count == process_index]


def embed_images(
    model,
    images: str,
    out: str | Path,
    *,
    per_unit: int = 10_000,
    dtype: str = "float16",
    workers: int = 0,
    image_keys: tuple[str, ...] = DEFAULT_IMAGE_KEYS,
    max_pixels: int = 64_000_000,
    process_index: int = 0,
    process_count: int = 1,
    progress=None,
    units: list[Unit] | None = None,
) -> EmbedReport:
    """Embeds every readable image of a folder or shard spec with `model` (a
    `LoadedModel`) into `out/img_emb/`; see the module docstring. `units`: what
    `image_units(images, per_unit)` gives, if already listed."""
    units = units or image_units(images, per_unit)
    writer = Writer(Path(out), "img", dtype, model.embed_dim)
    writer.claim(_manifest(model, images, units, dtype))
    decoder = image_decoder(model, image_keys, max_pixels)
    report = EmbedReport()
    for unit in _mine(units, process_index, process_count):
        if writer.finished(unit):
            report.already.append(unit.source)
            continue
        result, rows, index = _embed_image_unit(model, unit, decoder, workers, progress)
        _record(report, writer, unit, rows, index, result)
    return report


def _embed_image_unit(model, unit: Unit, decoder: ImageDecoder, workers: int, progress):
    stats, result = DataStats(), UnitResult()
    rows, index = [], []
    for item in decoded_batches(unit, decoder, workers, model.batch_size, stats):
        if isinstance(item, Skipped):
            result.skip(f"{item.key}: {item.reason}")
            continue
        crops, keys = item
        rows.append(model.encode_image(np.stack(crops)))
        index.extend({"key": k, "source": unit.source} for k in keys)
        if progress is not None:
            progress(len(crops))
    if stats.failed_shards:
        result.failed = f"{unit.source} could not be read to its end (see the warning above)"
    result.rows = len(index)
    return result, rows, index


def embed_texts(
    model,
    path: str,
    out: str | Path,
    *,
    per_unit: int = 10_000,
    dtype: str = "float16",
    process_index: int = 0,
    process_count: int = 1,
    progress=None,
    units: tuple[list[Unit], list[str]] | None = None,
) -> EmbedReport:
    """Embeds each non-blank line of `path` into `out/text_emb/` (index: line numbers).
    `units`: what `text_units(path, per_unit)` gives, if already read."""
    units, texts = units or text_units(path, per_unit)
    writer = Writer(Path(out), "text", dtype, model.embed_dim)
    writer.claim(_manifest(model, path, units, dtype))
    report = EmbedReport()
    for unit in _mine(units, process_index, process_count):
        if writer.finished(unit):
            report.already.append(unit.source)
            continue
        numbers = [n for n in range(*unit.lines) if texts[n].strip()]  # blank lines: none
        result = UnitResult(rows=len(numbers))
        rows = []
        for start in range(0, len(numbers), model.batch_size):
            chunk = numbers[start : start + model.batch_size]
            rows.append(model.encode_text([texts[n] for n in chunk]))
            if progress is not None:
                progress(len(chunk))
        index = [{"line": n + 1, "text": texts[n]} for n in numbers]
        _record(report, writer, unit, rows, index, result)
    return report


def _record(
    report: EmbedReport, writer: Writer, unit: Unit, rows: list, index: list, result: UnitResult
) -> None:
    if result.skipped:
        log.warning(
            "%s: %d item(s) skipped, e.g. %s", unit.source, result.skipped, result.reasons[0]
        )
    if result.failed:
        report.failed[unit.source] = result.failed
        return
    embeddings = np.concatenate(rows) if rows else np.zeros((0, writer.width), np.float32)
    writer.write(unit, embeddings, index, result)
    report.written.append(unit.source)
    report.rows += result.rows
    report.skipped += result.skipped


def _manifest(model, source: str, units: list[Unit], dtype: str) -> dict:
    return {
        "model": model.source,
        "input": source,
        "units": [u.source for u in units],
        "dtype": dtype,
        "image_size": model.image_size,
        "context_length": int(model.config.tokenizer.context_length),
    }

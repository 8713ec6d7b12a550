"""`clipjax shards`: webdataset shards (img2dataset layout) from an image folder,
a CSV/TSV of (path, caption), or the bundled digits.

Image bytes are stored as they are (no re-encoding) after a check that they
decode. Unreadable or missing images are skipped, warned about and counted.
Output never overwrites: the target directory must hold no shards yet.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from clipjax.data.writer import write_shards

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
FOLDER_TEMPLATES = ("a photo of a {c}.", "a picture of a {c}.", "{c}", "an image of the {c}.")


@dataclass
class ShardReport:
    written: int = 0
    skipped: int = 0
    shards: list[Path] = field(default_factory=list)


def _image_bytes(path: Path, report: ShardReport) -> tuple[str, bytes] | None:
    ext = IMAGE_SUFFIXES.get(path.suffix.lower())
    try:
        if ext is None:
            raise ValueError(f"not one of {sorted(IMAGE_SUFFIXES)}")
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        return ext, data
    except Exception as exc:  # PIL and the filesystem raise many types
        report.skipped += 1
        log.warning("skipping %s: %s", path, exc)
        return None


def folder_samples(
    root: Path, templates: tuple[str, ...], seed: int, report: ShardReport
) -> Iterator[dict]:
    """One subfolder per class; captions from `templates` (`{c}`: the class name)."""
    if bad := [t for t in templates if "{c}" not in t]:
        raise ValueError(f"caption templates need a {{c}} for the class name: {bad}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class subfolders")
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            found = _image_bytes(path, report) if path.is_file() else None
            if found is None:
                continue
            readable = name.replace("_", " ")
            caption = templates[rng.integers(len(templates))].format(c=readable)
            key = f"{label:04d}_{path.stem}"
            meta = {"caption": caption, "label": label, "class": name, "source": str(path)}
            yield {
                "__key__": key,
                found[0]: found[1],
                "txt": caption,
                "cls": str(label),
                "json": json.dumps(meta),
            }


def csv_samples(
    table: Path, path_column: str, caption_column: str, report: ShardReport
) -> Iterator[dict]:
    """Rows of a .csv or .tsv with a header; relative paths are relative to the table."""
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    with table.open(newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle, delimiter=delimiter)
        missing = {path_column, caption_column} - set(rows.fieldnames or ())
        if missing:
            raise ValueError(f"{table} lacks column(s) {sorted(missing)}; it has {rows.fieldnames}")
        for index, row in enumerate(rows):
            path = Path(row[path_column])
            path = path if path.is_absolute() else table.parent / path
            caption = (row[caption_column] or "").strip()
            found = _image_bytes(path, report) if caption else None
            if not caption:
                report.skipped += 1
                log.warning("skipping row %d of %s: empty caption", index + 2, table)
            if found is None:
                continue
            meta = {"caption": caption, "source": str(path)}
            yield {
                "__key__": f"{index:09d}",
                found[0]: found[1],
                "txt": caption,
                "json": json.dumps(meta),
            }


def write_new_shards(
    samples: Iterator[dict], out: Path, per_shard: int, report: ShardReport
) -> ShardReport:
    """Writes into `out`, which must not hold shards yet; counts into `report`."""
    if out.exists() and any(out.glob("*.tar")):
        raise FileExistsError(f"{out} already holds .tar shards; choose an empty directory")

    def counted() -> Iterator[dict]:
        for sample in samples:
            report.written += 1
            yield sample

    report.shards = write_shards(counted(), out, per_shard)
    return report

"""Evaluation sets on disk. clip_benchmark's webdataset layout:
`classnames.txt`, `zeroshot_classification_templates.txt` and `test/*.tar`
with `.cls` labels; templates use `{c}` for the class name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ZeroShotSet:
    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    shard_urls: tuple[str, ...]


def _lines(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (clip_benchmark layout expected)")
    lines = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not lines:
        raise ValueError(f"{path} is empty")
    return lines


def load_clip_benchmark_dir(directory: str | Path, name: str, split: str = "test") -> ZeroShotSet:
    root = Path(directory)
    templates = _lines(root / "zeroshot_classification_templates.txt")
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise ValueError(f"templates without a '{{c}}' placeholder in {root}: {bad[:3]}")
    shards = tuple(sorted(str(p) for p in (root / split).glob("*.tar")))
    if not shards:
        raise FileNotFoundError(f"no {split}/*.tar shards in {root}")
    return ZeroShotSet(name, _lines(root / "classnames.txt"), templates, shards)

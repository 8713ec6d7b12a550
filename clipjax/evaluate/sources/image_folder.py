"""Image folders: `DIR/<class>/<image>`, sorted folder names = label order; with
split folders (`DIR/train`, `DIR/val`, ...) each split is such a folder."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from clipjax.data.decode import IMAGE_EXTENSIONS, ImageTransform, image_files
from clipjax.evaluate.assets import WORDNET_ID, bundled_classnames, bundled_name
from clipjax.evaluate.fields import eval_field
from clipjax.evaluate.sources.evalset import (
    CLASSNAMES_FILE,
    DEFAULT_MAX_PIXELS,
    TEMPLATES_FILE,
    EvalSet,
    SampleDecoder,
    SourceContext,
    optional_lines,
    resolve_templates,
)
from clipjax.evaluate.sources.streamed import StreamedSet

log = logging.getLogger(__name__)

IMAGE_FOLDER_LAYOUT = (
    "expected DIR/<class name>/<image>.<jpg|jpeg|png|webp>, one subfolder per class "
    f"(sorted folder names give the label order), optionally DIR/{CLASSNAMES_FILE}"
)
SPLIT_FOLDERS = ("train", "val", "validation", "test")


def _folder_samples(root: Path, class_dirs: list[Path]) -> Iterable[dict]:
    for label, folder in enumerate(class_dirs):
        for path in image_files(folder):
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


def open_image_folder(
    directory: str | Path,
    name: str,
    transform: ImageTransform,
    templates: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    classnames: Sequence[str] | None = None,
    workers: int = 0,
) -> StreamedSet:
    """`DIR/<class>/<image>`, not yet read: labels in sorted folder-name order; class names from
    `classnames=` > `DIR/classnames.txt` > folder names with `_` as spaces; templates
    by `resolve_templates` (a `DIR/zeroshot_classification_templates.txt` counts as
    the set's file). Images anywhere below a class folder; hidden paths ignored."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; {IMAGE_FOLDER_LAYOUT}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise FileNotFoundError(f"{root} has no class subfolders; {IMAGE_FOLDER_LAYOUT}")
    names = classnames if classnames is not None else optional_lines(root / CLASSNAMES_FILE)
    names = tuple(names) if names is not None else _folder_classnames(name, class_dirs, root)
    if len(names) != len(class_dirs):
        raise ValueError(
            f"{root}: {len(names)} class names for {len(class_dirs)} class folders "
            f"({', '.join(p.name for p in class_dirs[:5])}, ...)"
        )
    chosen = resolve_templates(name, templates, optional_lines(root / TEMPLATES_FILE))
    decoder = SampleDecoder(transform, IMAGE_EXTENSIONS, max_pixels, "cls")
    where = f"{name} ({root})"
    return StreamedSet(
        name,
        "classification",
        lambda: _folder_samples(root, class_dirs),
        decoder,
        where,
        workers,
        names,
        chosen,
    )


def load_image_folder(*args, **kwargs) -> EvalSet:
    """`open_image_folder(...)` read into memory."""
    return open_image_folder(*args, **kwargs).collect()


def load(name: str, entry, ctx: SourceContext, split: str) -> StreamedSet:
    """`evals.NAME` with `source="image_folder"`: its `dataset_dir`, or that folder's `split`
    folder when it has split folders (a linear probe needs them)."""
    top = Path(eval_field(entry, "dataset_dir"))
    root = _split_folder(name, entry, top, split)
    templates, classnames = ctx.templates(entry), ctx.classnames(entry)
    if root != top:  # the set's own files sit above its split folders
        classnames = classnames or optional_lines(top / CLASSNAMES_FILE)
        templates = templates or optional_lines(top / TEMPLATES_FILE)
    bundled = eval_field(entry, "dataset_name") or name
    return open_image_folder(
        root, bundled, ctx.transform, templates, ctx.max_pixels, classnames=classnames
    )


def _split_folder(name: str, entry, root: Path, split: str) -> Path:
    """`DIR/<split>` when DIR has split folders, else DIR."""
    found = [s for s in SPLIT_FOLDERS if (root / s).is_dir()]
    if found or (root / split).is_dir():
        if not (root / split).is_dir():
            raise FileNotFoundError(f"evals.{name}: {root} has splits {found}, not {split!r}")
        return root / split
    if entry.kind == "linear_probe":
        raise FileNotFoundError(
            f"evals.{name}: a linear probe needs {root}/{eval_field(entry, 'train_split')} and "
            f"{root}/{split} (a subfolder per class in each); {root} has no split folders"
        )
    return root

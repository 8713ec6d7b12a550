"""Writing webdataset shards in img2dataset's layout (`KEY.png`, `KEY.txt`, `KEY.json`).

The bundled-digits builder turns scikit-learn's 8x8 digits into a train set of
captioned shards, a zero-shot set in clip_benchmark's layout (`classnames.txt`,
`zeroshot_classification_templates.txt`, held-out `test/*.tar` and the training
images in `train/*.tar`, with `.cls` labels) and a retrieval set of the held-out
images with two captions each. The result is cached: a second call returns the finished
directory without touching it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Caption templates used for training; `{word}` is the English name, `{digit}` the numeral.
TRAIN_TEMPLATES = (
    "a photo of the number {word}.",
    "handwritten {digit}",
    "the digit {word}.",
    "a scan of a handwritten {word}",
    "{word}",
    "{word}.",
    "a tiny numeral {digit}.",
    "number {digit}, by hand",
    "a low-res {word}.",
    "someone wrote {word}!",
    "{digit}",
    "grayscale digit: {word}",
    "the number {digit}.",
    "a {word} on a dark page.",
    "white ink {word}",
    "it says {word}.",
    "a pixelated {digit}",
    "an old scan of {digit}.",
    "{word}, handwritten.",
    "the numeral {word}",
    "my {word}!",
    "look, a {word}.",
    "sketch of {word}",
    "one more {word}.",
)

# Zero-shot prompts: none of these appears in TRAIN_TEMPLATES.
ZEROSHOT_TEMPLATES = (
    "a picture of the digit {c}.",
    "an image showing {c}.",
    "a blurry drawing of a {c}.",
    "this is {c}.",
)

# Retrieval captions of held-out digits: none of these appears in TRAIN_TEMPLATES either.
RETRIEVAL_TEMPLATES = (
    "a handwritten {word} on a dark background.",
    "the numeral {digit}, written by hand.",
    "a small gray picture of the digit {word}.",
)
DIGITS_LAYOUT_VERSION = "digits-v2"  # v2: zeroshot/train (linear probe) and retrieval/


@dataclass(frozen=True)
class DigitsShards:
    """Where the bundled-digits shards live."""

    root: Path

    @property
    def zeroshot_dir(self) -> Path:
        """clip_benchmark classification layout: test/ held out, train/ for linear probes."""
        return self.root / "zeroshot"

    @property
    def retrieval_dir(self) -> Path:
        """clip_benchmark retrieval layout: held-out images, captions one per line."""
        return self.root / "retrieval"

    def train_urls(self) -> list[str]:
        return sorted(str(p) for p in (self.root / "train").glob("*.tar"))


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipjax"


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def digits_images(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 RGB images of `image_size` pixels, and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for small in digits.images:
        gray = Image.fromarray(np.uint8(np.round(small * (255.0 / 16.0))), mode="L")
        images.append(np.asarray(gray.resize((image_size, image_size), Image.BILINEAR)))
    rgb = np.repeat(np.stack(images)[..., None], 3, axis=-1)
    return rgb, digits.target.astype(np.int64)


def write_shards(
    samples: Iterable[dict], out_dir: Path, samples_per_shard: int, name_format: str = "{:05d}.tar"
) -> list[Path]:
    """Writes `samples` (webdataset dicts with `__key__`) into numbered tar shards."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard={samples_per_shard} must be positive")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    writer = None
    for index, sample in enumerate(samples):
        if index % samples_per_shard == 0:
            if writer is not None:
                writer.close()
            paths.append(out_dir / name_format.format(len(paths)))
            writer = wds.TarWriter(str(paths[-1]))
        writer.write(sample)
    if writer is not None:
        writer.close()
    return paths


def _caption_samples(
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    captions_per_image: int,
    seed: int,
) -> Iterator[dict]:
    """Each image `captions_per_image` times, each time with a different template.

    One fixed caption per image would let the model pair images with their
    template instead of their digit; on a dataset this small it does.
    """
    rng = np.random.default_rng(seed)
    for copy in range(captions_per_image):
        for key_index in rng.permutation(indices):
            label = int(labels[key_index])
            template = TRAIN_TEMPLATES[rng.integers(len(TRAIN_TEMPLATES))]
            caption = template.format(word=DIGIT_WORDS[label], digit=label)
            meta = {"key": f"{key_index:06d}_{copy}", "caption": caption, "label": label}
            yield {
                "__key__": meta["key"],
                "png": encode_png(images[key_index]),
                "txt": caption,
                "json": json.dumps(meta),
            }


def _labelled_samples(
    images: np.ndarray, labels: np.ndarray, indices: np.ndarray
) -> Iterator[dict]:
    for key_index in indices:
        yield {
            "__key__": f"{key_index:06d}",
            "png": encode_png(images[key_index]),
            "cls": str(int(labels[key_index])),
        }


def _retrieval_samples(
    images: np.ndarray, labels: np.ndarray, indices: np.ndarray, seed: int
) -> Iterator[dict]:
    """Each image with two of the retrieval templates as its captions."""
    rng = np.random.default_rng(seed)
    for key_index in indices:
        label = int(labels[key_index])
        chosen = rng.choice(len(RETRIEVAL_TEMPLATES), size=2, replace=False)
        captions = [
            RETRIEVAL_TEMPLATES[i].format(word=DIGIT_WORDS[label], digit=label) for i in chosen
        ]
        yield {
            "__key__": f"{key_index:06d}",
            "png": encode_png(images[key_index]),
            "txt": "\n".join(captions),
        }


def build_digits_shards(
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 32,
    test_fraction: float = 0.2,
    samples_per_shard: int = 512,
    captions_per_image: int = 6,
    seed: int = 0,
) -> DigitsShards:
    """Builds (or reuses) the bundled-digits shards and returns where they are."""
    from sklearn.model_selection import train_test_split

    name = (
        f"{DIGITS_LAYOUT_VERSION}-{image_size}px-test{test_fraction:g}-c{captions_per_image}"
        f"-n{samples_per_shard}-s{seed}"
    )
    root = Path(cache_dir or default_cache_dir()) / name
    if (root / "DONE").is_file():
        return DigitsShards(root)

    images, labels = digits_images(image_size)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root.parent))
    try:
        train = _caption_samples(images, labels, train_idx, captions_per_image, seed)
        write_shards(train, staging / "train", samples_per_shard)
        zeroshot = staging / "zeroshot"
        write_shards(
            _labelled_samples(images, labels, np.sort(test_idx)),
            zeroshot / "test",
            samples_per_shard,
            name_format="{}.tar",
        )
        write_shards(
            _labelled_samples(images, labels, np.sort(train_idx)),
            zeroshot / "train",
            samples_per_shard,
            name_format="{}.tar",
        )
        write_shards(
            _retrieval_samples(images, labels, np.sort(test_idx), seed),
            staging / "retrieval" / "test",
            samples_per_shard,
            name_format="{}.tar",
        )
        (zeroshot / "classnames.txt").write_text("\n".join(DIGIT_WORDS) + "\n")
        (zeroshot / "zeroshot_classification_templates.txt").write_text(
            "\n".join(ZEROSHOT_TEMPLATES) + "\n"
        )
        counts = {"train": len(train_idx) * captions_per_image, "test": len(test_idx)}
        (staging / "DONE").write_text(json.dumps(counts) + "\n")
        try:
            staging.rename(root)
        except OSError:
            if not (root / "DONE").is_file():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DigitsShards(root)

"""Safe decoding of webdataset members and image transforms.

Only allow-listed extensions are ever decoded; nothing is unpickled, whatever
a member's name says. Images are opened with a pixel-count limit so a
decompression bomb is rejected instead of exhausting memory.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from clipjax.data.augment import ImageAugment

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSIONS = ("txt",)
ALLOWED_EXTENSIONS = frozenset((*IMAGE_EXTENSIONS, *TEXT_EXTENSIONS, "json", "cls"))


class BadSample(ValueError):
    """A sample that cannot be used: missing member, undecodable image, bad text. The
    message says why, without the sample's key (the caller has it), so that equal
    reasons can be counted together."""


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder` (any depth; by extension, hidden paths skipped),
    sorted by their path relative to it."""
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix[1:].lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def parse_keys(spec: str) -> tuple[str, ...]:
    """`"png;jpg"` -> ("png", "jpg"), checked against the allow-list."""
    keys = tuple(k.strip().lower() for k in spec.split(";") if k.strip())
    for key in keys:
        ext = key.split(".")[0]
        if ext not in ALLOWED_EXTENSIONS:
            raise ValueError(f"key {key!r} is not decodable; allowed: {sorted(ALLOWED_EXTENSIONS)}")
    if not keys:
        raise ValueError(f"empty key spec {spec!r}")
    return keys


def _first(sample: dict, keys: Sequence[str]) -> tuple[str, bytes]:
    for key in keys:
        if key in sample:
            return key, sample[key]
    raise BadSample(f"none of the members {list(keys)}")


def load_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decodes image bytes to RGB, refusing more than `max_pixels` pixels."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise BadSample(f"image of {width}x{height} pixels exceeds max_pixels={max_pixels}")
        return image.convert("RGB")
    except BadSample:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadSample(f"undecodable image: {exc}") from exc


def read_image(sample: dict, keys: Sequence[str], max_pixels: int) -> Image.Image:
    _, data = _first(sample, keys)
    return load_image(data, max_pixels)


def read_text(sample: dict, key: str) -> str:
    """`key` is `txt` or `json.field` (a caption stored inside the JSON member)."""
    ext, _, field = key.partition(".")
    _, data = _first(sample, (ext,))
    try:
        value = json.loads(data)[field or "caption"] if ext == "json" else data.decode("utf-8")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadSample(f"unreadable text {key!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(value, str) or not value.strip():
        raise BadSample("an empty caption")
    return value


def read_label(sample: dict) -> int:
    _, data = _first(sample, ("cls",))
    try:
        return int(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadSample(f"bad .cls label {data[:20]!r}") from exc


RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def check_resize(resize_mode: str, interpolation: str) -> list[str]:
    """Problems with an eval resize mode and an interpolation name."""
    problems = []
    if resize_mode not in RESIZE_MODES:
        problems.append(f"eval_resize={resize_mode!r} is not one of {RESIZE_MODES}")
    if interpolation not in INTERPOLATIONS:
        allowed = tuple(INTERPOLATIONS)
        problems.append(f"eval_interpolation={interpolation!r} is not one of {allowed}")
    return problems


def eval_resize_fields(data) -> tuple[str, str]:
    """`data.eval_resize` and `data.eval_interpolation`; a config saved before they existed
    ran with ("shortest", "bicubic")."""
    return data.get("eval_resize") or "shortest", data.get("eval_interpolation") or "bicubic"


def eval_transform(data, image_size: int | None = None) -> ImageTransform:
    """The eval crop of the `data` config group, at `image_size` (default its own)."""
    resize_mode, interpolation = eval_resize_fields(data)
    return ImageTransform(
        image_size or data.image_size,
        data.mean,
        data.std,
        train=False,
        resize_mode=resize_mode,
        interpolation=interpolation,
    )


class ImageTransform:
    """PIL image -> crop (uint8 HWC) -> normalised float32.

    Training uses a random resized crop (area fraction in `crop_scale`, aspect
    ratio in [3/4, 4/3]) and then `augment`. Evaluation follows open_clip's eval
    transforms with torchvision's integer arithmetic, pixel for pixel:

    - `shortest`: the short side to `size` (the long side truncated), then a center
      crop whose offset is rounded (torchvision's `Resize(size)` + `CenterCrop`);
    - `longest`: the long side to `size` (both sides rounded), then padded with
      `fill` to a square (open_clip's `ResizeKeepRatio(longest=1)` + `CenterCropOrPad`);
    - `squash`: both sides to `size`, the aspect ratio not kept.

    Images are converted to RGB before resizing; open_clip resizes in the file's mode
    first, which differs only for palette (nearest-neighbour there) and RGBA images.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        crop_scale: Sequence[float] = (1.0, 1.0),
        augment: ImageAugment | None = None,
        resize_mode: str = "shortest",
        interpolation: str = "bicubic",
        fill: int = 0,
    ):
        problems = check_resize(resize_mode, interpolation)
        if problems:
            raise ValueError("; ".join(problems))
        self.size = size
        self.resize_mode = resize_mode
        self.resample = INTERPOLATIONS[interpolation]
        self.fill = fill
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, np.float32) * 255.0)
        self.train = train
        self.crop_scale = tuple(crop_scale)
        self.augment = augment if train and augment and augment.active else None

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        return self.normalize(self.crop(image, rng))

    def crop(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """The crop as uint8 HWC (4x less to move between processes than floats)."""
        if self.train and self.crop_scale != (1.0, 1.0):
            image = image.crop(self._random_box(image.size, rng))
            image = image.resize((self.size, self.size), self.resample)
        else:
            image = self._eval_resize(image)
        if self.augment is not None:
            image = self.augment(image, rng)
        return np.asarray(image, np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [..., H, W, 3] -> float32 with the configured mean and std."""
        return (pixels.astype(np.float32) - self.mean) * self.inv_std

    def _random_box(self, size: tuple[int, int], rng: np.random.Generator) -> tuple:
        width, height = size
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.crop_scale)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w = round(np.sqrt(target * ratio))
            h = round(np.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                left = int(rng.integers(0, width - w + 1))
                top = int(rng.integers(0, height - h + 1))
                return (left, top, left + w, top + h)
        return (0, 0, width, height)

    def _eval_resize(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        size = self.size
        if self.resize_mode == "squash":
            return image.resize((size, size), self.resample)
        if self.resize_mode == "shortest":
            short, long = min(width, height), max(width, height)
            scaled = int(size * long / short)  # torchvision truncates the long side
            new = (size, scaled) if width <= height else (scaled, size)
        else:
            ratio = max(width, height) / size
            new = (round(width / ratio), round(height / ratio))
        if new != (width, height):
            image = image.resize(new, self.resample)
        return center_crop_or_pad(image, size, self.fill)


def center_crop_or_pad(image: Image.Image, size: int, fill: int = 0) -> Image.Image:
    """The `size` square at the center, padding with `fill` first where a side is
    shorter (the extra pixel on the right/bottom); offsets rounded half to even, as
    torchvision's `CenterCrop` computes them."""
    width, height = image.size
    if width < size or height < size:
        left, top = max(size - width, 0) // 2, max(size - height, 0) // 2
        bands = (fill,) * len(image.getbands())
        padded = Image.new(image.mode, (max(width, size), max(height, size)), bands)
        padded.paste(image, (left, top))
        image, (width, height) = padded, padded.size
    if (width, height) == (size, size):
        return image
    top, left = round((height - size) / 2), round((width - size) / 2)
    return image.crop((left, top, left + size, top + size))

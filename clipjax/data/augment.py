"""Training augmentations of a decoded pair, drawn from the sample's own generator.

Image (after the random resized crop, in SimCLR's order, Chen et al. 2020, appendix
A): horizontal flip, colour jitter (brightness, contrast, saturation, hue in a random
order, as torchvision's `ColorJitter`), grayscale, Gaussian blur.

Caption: EDA's word-level edits (Wei and Zou 2019, section 2) that need no
thesaurus: random deletion, random swap, and random insertion of one of the
caption's own words. One operation is chosen per augmented caption, as EDA does
for each sentence it generates.

Every draw comes from the generator `PairDecoder` seeds with the sample's stream
position, so a sample augments the same way on any worker count and after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

TEXT_OPS = ("delete", "swap", "insert")

# The `data.augment` fields, their types, and the values that switch each off.
AUGMENT_FIELDS = {
    "hflip_prob": float,
    "color_jitter_prob": float,
    "color_jitter": tuple,  # (brightness, contrast, saturation, hue) strengths
    "grayscale_prob": float,
    "blur_prob": float,
    "blur_sigma": tuple,  # (lo, hi) of the Gaussian's standard deviation, in pixels
    "text_prob": float,
    "text_ops": tuple,  # some of TEXT_OPS
    "text_alpha": float,  # EDA's alpha: the fraction of a caption's words changed
}
# A probability of 0 leaves its parameters unused: they must then be unset.
PARAMETERS_OF = {
    "color_jitter_prob": ("color_jitter",),
    "blur_prob": ("blur_sigma",),
    "text_prob": ("text_ops", "text_alpha"),
}


@dataclass(frozen=True)
class ImageAugment:
    hflip_prob: float = 0.0
    color_jitter_prob: float = 0.0
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    grayscale_prob: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    @property
    def active(self) -> bool:
        return any(
            p > 0
            for p in (self.hflip_prob, self.color_jitter_prob, self.grayscale_prob, self.blur_prob)
        )

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        if self.hflip_prob and rng.random() < self.hflip_prob:
            image = ImageOps.mirror(image)
        if self.color_jitter_prob and rng.random() < self.color_jitter_prob:
            image = color_jitter(image, self.color_jitter, rng)
        if self.grayscale_prob and rng.random() < self.grayscale_prob:
            image = image.convert("L").convert("RGB")
        if self.blur_prob and rng.random() < self.blur_prob:
            sigma = rng.uniform(*self.blur_sigma)
            image = image.filter(ImageFilter.GaussianBlur(radius=sigma))  # radius = std dev
        return image


def color_jitter(
    image: Image.Image, strengths: Sequence[float], rng: np.random.Generator
) -> Image.Image:
    """torchvision's `ColorJitter` on a PIL image: brightness, contrast and saturation
    factors uniform in [max(0, 1 - s), 1 + s], a hue shift uniform in [-h, h] of the
    colour wheel, applied in a random order; a strength of 0 skips its adjustment."""
    brightness, contrast, saturation, hue = strengths
    for op in rng.permutation(4):
        if op == 0 and brightness:
            image = ImageEnhance.Brightness(image).enhance(_factor(brightness, rng))
        elif op == 1 and contrast:
            image = ImageEnhance.Contrast(image).enhance(_factor(contrast, rng))
        elif op == 2 and saturation:
            image = ImageEnhance.Color(image).enhance(_factor(saturation, rng))
        elif op == 3 and hue:
            image = shift_hue(image, rng.uniform(-hue, hue))
    return image


def _factor(strength: float, rng: np.random.Generator) -> float:
    return rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength)


def shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotates the hue by `shift` of a full turn (in [-0.5, 0.5]), in 8-bit HSV."""
    h, s, v = image.convert("HSV").split()
    rotated = (np.asarray(h, np.uint8) + np.uint8(round(shift * 255) % 256)).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(rotated, "L"), s, v)).convert("RGB")


@dataclass(frozen=True)
class TextAugment:
    prob: float = 0.0
    ops: tuple[str, ...] = ()
    alpha: float = 0.1

    @property
    def active(self) -> bool:
        return self.prob > 0

    def __call__(self, caption: str, rng: np.random.Generator) -> str:
        if not self.prob or rng.random() >= self.prob:
            return caption
        words = caption.split()
        if len(words) < 2:
            return caption
        op = self.ops[int(rng.integers(len(self.ops)))]
        return " ".join(EDIT[op](words, self.alpha, rng))


def _edits(words: list[str], alpha: float) -> int:
    return max(1, int(alpha * len(words)))


def random_deletion(words: list[str], alpha: float, rng: np.random.Generator) -> list[str]:
    """Each word is removed with probability alpha; one word is always kept."""
    kept = [w for w, drop in zip(words, rng.random(len(words)) < alpha, strict=True) if not drop]
    return kept or [words[int(rng.integers(len(words)))]]


def random_swap(words: list[str], alpha: float, rng: np.random.Generator) -> list[str]:
    """max(1, alpha * n) times, two random positions exchange their words."""
    words = list(words)
    for _ in range(_edits(words, alpha)):
        i, j = rng.integers(len(words), size=2)
        words[i], words[j] = words[j], words[i]
    return words


def random_insertion(words: list[str], alpha: float, rng: np.random.Generator) -> list[str]:
    """max(1, alpha * n) times, one of the caption's own words is inserted at a random
    position (EDA inserts a synonym; a caption's own word needs no thesaurus)."""
    words = list(words)
    for _ in range(_edits(words, alpha)):
        word = words[int(rng.integers(len(words)))]
        words.insert(int(rng.integers(len(words) + 1)), word)
    return words


EDIT = {"delete": random_deletion, "swap": random_swap, "insert": random_insertion}


def build_augments(augment) -> tuple[ImageAugment, TextAugment]:
    """The image and text augmentations of a checked `data.augment` group."""
    image = ImageAugment(
        hflip_prob=float(augment.hflip_prob),
        color_jitter_prob=float(augment.color_jitter_prob),
        color_jitter=tuple(augment.color_jitter) or (0.0, 0.0, 0.0, 0.0),
        grayscale_prob=float(augment.grayscale_prob),
        blur_prob=float(augment.blur_prob),
        blur_sigma=tuple(augment.blur_sigma) or (0.1, 2.0),
    )
    text = TextAugment(
        prob=float(augment.text_prob),
        ops=tuple(augment.text_ops),
        alpha=float(augment.text_alpha or 0.0),
    )
    return image, text


def augment_problems(augment) -> list[str]:
    """Every problem of a `data.augment` group (a ConfigDict or mapping)."""
    if augment is None:
        return ["data.augment is not set: expected a group of " + ", ".join(AUGMENT_FIELDS)]
    problems = []
    unknown = sorted(set(augment.keys()) - set(AUGMENT_FIELDS))
    if unknown:
        problems.append(
            f"data.augment has unknown fields {unknown}; expected {list(AUGMENT_FIELDS)}"
        )
    for name, expected in AUGMENT_FIELDS.items():
        problems += _field_problems(augment, name, expected)
    if problems:
        return problems
    for prob, parameters in PARAMETERS_OF.items():
        for name in parameters:
            value = augment[name]
            unset = value is None or (isinstance(value, tuple | list) and not value)
            if augment[prob] == 0 and not unset:
                empty = "()" if isinstance(value, tuple | list) else "None"
                problems.append(
                    f"data.augment.{name}={_show(value)} not used with data.augment.{prob}=0: "
                    f"remove it or set --config.data.augment.{name}={empty}"
                )
            elif augment[prob] > 0 and unset:
                problems.append(
                    f"data.augment.{name} is not set: data.augment.{prob}={augment[prob]} needs it"
                )
    return problems + _value_problems(augment)


def _field_problems(augment, name: str, expected: type) -> list[str]:
    value = augment.get(name)
    if value is None and name in ("text_alpha",):
        return []
    allowed = (int, float) if expected is float else (tuple, list)
    if value is None or isinstance(value, bool) or not isinstance(value, allowed):
        return [
            f"data.augment.{name}={value!r} has type {type(value).__name__}, "
            f"expected {expected.__name__}"
        ]
    return []


def _value_problems(augment) -> list[str]:
    problems = [
        f"data.augment.{name}={augment[name]} must be in [0, 1]"
        for name in ("hflip_prob", "color_jitter_prob", "grayscale_prob", "blur_prob", "text_prob")
        if not 0 <= augment[name] <= 1
    ]
    jitter = tuple(augment.color_jitter)
    if jitter and (len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5):
        problems.append(
            f"data.augment.color_jitter={jitter}: expected 4 strengths (brightness, contrast, "
            "saturation, hue), none negative, hue at most 0.5"
        )
    sigma = tuple(augment.blur_sigma)
    if sigma and (len(sigma) != 2 or not 0 < sigma[0] <= sigma[1]):
        problems.append(f"data.augment.blur_sigma={sigma}: expected (lo, hi) with 0 < lo <= hi")
    ops = tuple(augment.text_ops)
    if any(op not in TEXT_OPS for op in ops) or len(set(ops)) != len(ops):
        problems.append(f"data.augment.text_ops={ops}: expected distinct names of {TEXT_OPS}")
    alpha = augment.text_alpha
    if alpha is not None and not 0 < alpha <= 1:
        problems.append(f"data.augment.text_alpha={alpha} must be in (0, 1]")
    return problems


def _show(value) -> str:
    return str(tuple(value)) if isinstance(value, tuple | list) else repr(value)

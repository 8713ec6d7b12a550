"""Training augmentations: each operation against a direct computation, the config
checks, and that a sample augments the same way on any worker count and on resume."""

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from clipjax.data.augment import (
    ImageAugment,
    TextAugment,
    augment_problems,
    color_jitter,
    random_deletion,
    random_insertion,
    random_swap,
    shift_hue,
)
from clipjax.data.decode import ImageTransform
from tests.test_data_resume import _assert_same_batches, _loader, _take, _write_tar
from tests.test_data_resume import _image as _png

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)
CAPTION = "a blurry photo of the handwritten digit seven on white paper"
WORDS = CAPTION.split(" ")


def _image() -> Image.Image:
    return Image.fromarray(PIXELS)


def test_flip_and_grayscale_at_probability_one():
    flipped = ImageAugment(hflip_prob=1.0)(_image(), np.random.default_rng(0))
    np.testing.assert_array_equal(np.asarray(flipped), PIXELS[:, ::-1])
    gray = np.asarray(ImageAugment(grayscale_prob=1.0)(_image(), np.random.default_rng(0)))
    luma = PIXELS.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2
    for channel in range(3):
        np.testing.assert_allclose(gray[..., channel], luma, atol=1.0)


def _luma(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).convert("L"), np.float64)


@pytest.mark.parametrize("which", [0, 1, 2])  # brightness, contrast, saturation
def test_jitter_blends_towards_black_the_mean_or_gray_by_a_factor_in_range(which):
    strengths = [0.0] * 4
    strengths[which] = 0.4
    got = np.asarray(color_jitter(_image(), strengths, np.random.default_rng(5)), np.float64)
    draws = np.random.default_rng(5)
    draws.permutation(4)
    factor = draws.uniform(0.6, 1.4)
    towards = [0.0, np.round(_luma(PIXELS).mean()), _luma(PIXELS)[..., None]][which]
    want = np.clip(towards + factor * (PIXELS - towards), 0, 255)
    np.testing.assert_allclose(got, want, atol=1.0)


def test_hue_shift_of_a_third_turns_red_into_green_and_back():
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    green = np.asarray(shift_hue(red, 1 / 3))
    np.testing.assert_allclose(green[0, 0], (0, 255, 0), atol=6)
    back = np.asarray(shift_hue(Image.fromarray(green), -1 / 3))
    np.testing.assert_allclose(back[0, 0], (255, 0, 0), atol=6)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_blur_spreads_a_point_by_sigma(sigma):
    point = np.zeros((41, 41, 3), np.uint8)
    point[20, 20] = 255
    augment = ImageAugment(blur_prob=1.0, blur_sigma=(sigma, sigma))
    blurred = np.asarray(augment(Image.fromarray(point), np.random.default_rng(0)), np.float64)
    row = blurred[20, :, 0]
    spread = np.sqrt(np.sum(row * (np.arange(41) - 20) ** 2) / row.sum())
    assert abs(spread - sigma) < 0.25 * sigma, spread


def test_text_edits_use_only_the_captions_own_words():
    rng = np.random.default_rng(3)
    deleted = random_deletion(WORDS, 0.3, rng)
    it = iter(WORDS)
    assert 1 <= len(deleted) < len(WORDS) and all(w in it for w in deleted)  # a subsequence
    swapped = random_swap(WORDS, 0.2, rng)
    assert sorted(swapped) == sorted(WORDS) and swapped != WORDS
    inserted = random_insertion(WORDS, 0.2, rng)
    assert len(inserted) == len(WORDS) + 2 and set(inserted) == set(WORDS)
    assert random_deletion(["one", "two"], 1.0, rng) in (["one"], ["two"])


def test_text_augment_applies_with_its_probability_and_skips_one_word_captions():
    augment = TextAugment(prob=0.5, ops=("swap",), alpha=0.2)
    changed = [augment(CAPTION, np.random.default_rng(i)) != CAPTION for i in range(400)]
    assert 0.4 < np.mean(changed) < 0.6
    assert augment("seven", np.random.default_rng(0)) == "seven"


@pytest.fixture(scope="module")
def captioned_urls(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("captioned")
    urls = []
    for shard in range(4):
        members = []
        for i in range(11 + shard):
            key = f"s{shard}-{i:03d}"
            caption = f"a small photo of sample {i} in shard {shard}".encode()
            members += [(f"{key}.png", _png(shard * 31 + i)), (f"{key}.txt", caption)]
        urls.append(_write_tar(root / f"{shard:05d}.tar", members))
    return urls


def _augmented_loader(urls, **kwargs):
    loader = _loader(urls, **kwargs)
    loader.decoder.transform.augment = ImageAugment(
        hflip_prob=0.5, color_jitter_prob=0.8, color_jitter=(0.4, 0.4, 0.2, 0.1),
        grayscale_prob=0.2, blur_prob=0.5, blur_sigma=(0.1, 2.0),
    )  # fmt: skip
    object.__setattr__(
        loader.decoder, "text_augment", TextAugment(prob=1.0, ops=("insert",), alpha=0.5)
    )
    return loader


def test_augmented_batches_are_the_same_on_any_worker_count_and_after_a_resume(
    captioned_urls,
):
    urls = captioned_urls
    plain = _take(_loader(urls, "resampled"), 6)
    inline = _take(_augmented_loader(urls, mode="resampled"), 6)
    pooled = _take(_augmented_loader(urls, mode="resampled", workers=2), 6)
    _assert_same_batches(inline, pooled)
    resumed = _take(_augmented_loader(urls, mode="resampled", state=pooled[2][1]), 3)
    _assert_same_batches(resumed, inline[3:])
    # the augmentations did change every batch, images and captions
    for (a, _), (p, _) in zip(inline, plain, strict=True):
        assert not np.array_equal(a["image"], p["image"])
        assert not np.array_equal(a["text"], p["text"])


def test_evaluation_transforms_never_augment():
    transform = ImageTransform(8, (0.5,) * 3, (0.5,) * 3, train=False, augment=ImageAugment(1.0))
    assert transform.augment is None


def _group(**values) -> ConfigDict:
    fields = dict(
        hflip_prob=0.0, color_jitter_prob=0.0, color_jitter=(), grayscale_prob=0.0,
        blur_prob=0.0, blur_sigma=(), text_prob=0.0, text_ops=(), text_alpha=None,
    )  # fmt: skip
    return ConfigDict({**fields, **values})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (dict(blur_sigma=(0.1, 2.0)), r"blur_sigma=\(0.1, 2.0\) not used with .*blur_prob=0"),
        (dict(color_jitter_prob=0.8), r"color_jitter is not set: .*color_jitter_prob=0.8"),
        (dict(hflip_prob=1.5), r"hflip_prob=1.5 must be in \[0, 1\]"),
        (dict(color_jitter_prob=0.8, color_jitter=(0.4, 0.4)), "expected 4 strengths"),
        (dict(text_prob=0.5, text_ops=("shuffle",), text_alpha=0.1), "distinct names of"),
        (dict(text_prob=0.5, text_ops=("swap",), text_alpha=0.0), r"alpha=0.0 must be in \(0, 1"),
        (dict(hflip_prob="0.5"), "hflip_prob='0.5' has type str, expected float"),
        (dict(flip=0.5), r"unknown fields \['flip'\]"),
    ],
)  # fmt: skip
def test_bad_augment_fields_are_refused_with_the_fix(values, message):
    problems = augment_problems(_group(**values))
    assert any(__import__("re").search(message, p) for p in problems), problems


def test_default_and_improved_recipes_pass_the_checks():
    from clipjax.config import load_config

    assert augment_problems(load_config("configs/default.py").data.augment) == []
    improved = load_config("configs/clip/vit_b16.py:improved")
    assert augment_problems(improved.data.augment) == []
    assert improved.data.augment.hflip_prob > 0 and improved.data.augment.text_prob > 0

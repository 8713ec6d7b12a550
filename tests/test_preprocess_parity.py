"""The eval crop equals open_clip's eval transform pixel for pixel (torchvision's
integer arithmetic: truncated long sides, rounded crop offsets), for its three resize
modes and both interpolations, on images made by tests/fixtures/preprocess/make_fixture.py."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipjax.data.decode import ImageTransform, center_crop_or_pad

FIXTURE = Path(__file__).parent / "fixtures" / "preprocess" / "open_clip_eval_crops.npz"


def _png(data: np.ndarray) -> Image.Image:
    return Image.open(io.BytesIO(data.tobytes()))


def _cases():
    with np.load(FIXTURE) as arrays:
        stored = {name: arrays[name] for name in arrays.files}
    cases = []
    for name in sorted(stored):
        match = re.fullmatch(r"crop_(\d+)_(\d+)_(\w+)_(\w+)", name)
        if match:
            index, size, mode, interpolation = match.groups()
            source = _png(stored[f"source_{index}"])
            case = (source, int(size), mode, interpolation, np.asarray(_png(stored[name])))
            cases.append(pytest.param(*case, id=f"{source.size[0]}x{source.size[1]}-{name}"))
    return cases


CASES = _cases()


def test_the_fixture_covers_the_reported_sizes_and_every_mode():
    ids = [c.id for c in CASES]
    assert len(ids) == 28
    assert any(i.startswith("500x375-") and "224_shortest" in i for i in ids)
    assert any(i.startswith("375x500-") and "224_longest" in i for i in ids)
    assert {m for i in ids for m in ("shortest", "longest", "squash", "bilinear") if m in i} == {
        "shortest", "longest", "squash", "bilinear",
    }  # fmt: skip


@pytest.mark.parametrize(("source", "size", "mode", "interpolation", "expected"), CASES)
def test_eval_crop_equals_open_clip(source, size, mode, interpolation, expected):
    transform = ImageTransform(
        size, (0.5,) * 3, (0.5,) * 3, train=False, resize_mode=mode, interpolation=interpolation
    )
    got = transform.crop(source.convert("RGB"), np.random.default_rng(0))
    assert got.shape == expected.shape == (size, size, 3)
    np.testing.assert_array_equal(got, expected)


def test_the_old_arithmetic_differs_on_the_reported_image():
    """Rounding the long side (what clipjax did) gives 299 px where torchvision gives
    298 for a 500x375 image at 224: the crops differ, so the fixture can tell."""
    source, size, *_, expected = next(
        c.values for c in CASES if c.id.startswith("500x375-") and "224_shortest_bicubic" in c.id
    )
    resized = source.resize((round(500 * 224 / 375), 224), Image.BICUBIC)
    left = (resized.size[0] - size) // 2
    old = np.asarray(resized.crop((left, 0, left + size, size)))
    assert resized.size == (299, 224) and int(500 * 224 / 375) == 298
    assert np.abs(old.astype(int) - expected).max() > 10


def test_center_crop_or_pad_pads_then_rounds_half_to_even():
    image = Image.new("RGB", (3, 7), (200, 100, 50))
    padded = np.asarray(center_crop_or_pad(image, 6, fill=9))
    assert padded.shape == (6, 6, 3)
    assert (padded[:, :1] == 9).all() and (padded[:, 4:] == 9).all()  # 1 left, 2 right
    assert (padded[:, 1:4] == (200, 100, 50)).all()
    wide = Image.fromarray(np.arange(11, dtype=np.uint8)[None, :].repeat(2, 0))
    # (11 - 2) / 2 = 4.5 rounds to 4 (even), as torchvision's CenterCrop
    assert np.asarray(center_crop_or_pad(wide, 2))[0].tolist() == [4, 5]


def test_bad_resize_settings_are_refused():
    with pytest.raises(ValueError, match="eval_resize='crop' is not one of"):
        ImageTransform(8, (0.5,) * 3, (0.5,) * 3, train=False, resize_mode="crop")
    with pytest.raises(ValueError, match="eval_interpolation='nearest'"):
        ImageTransform(8, (0.5,) * 3, (0.5,) * 3, train=False, interpolation="nearest")

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipjax.data.decode import BadSample, ImageTransform, load_image, parse_keys, read_text
from clipjax.data.loader import PairLoader, Prefetch
from clipjax.data.pipeline import PairDecoder
from clipjax.data.shards import DataStats, SampleStream, expand_urls, process_shards
from clipjax.data.tokenizers import ByteTokenizer
from clipjax.data.writer import TRAIN_TEMPLATES, ZEROSHOT_TEMPLATES, build_digits_shards


def test_digits_shards_layout_and_cache(digits_cache):
    shards = build_digits_shards(digits_cache)
    counts = json.loads((shards.root / "DONE").read_text())
    assert counts == {"train": 1437 * 6, "test": 360}
    urls = shards.train_urls()
    mtimes = [p.stat().st_mtime_ns for p in shards.root.rglob("*.tar")]
    again = build_digits_shards(digits_cache)
    assert again.root == shards.root
    assert [p.stat().st_mtime_ns for p in shards.root.rglob("*.tar")] == mtimes
    with tarfile.open(urls[0]) as tar:
        names = tar.getnames()
        assert {n.split(".", 1)[1] for n in names} == {"png", "txt", "json"}
        key = names[0].split(".")[0]
        meta = json.loads(tar.extractfile(f"{key}.json").read())
        caption = tar.extractfile(f"{key}.txt").read().decode()
        image = Image.open(io.BytesIO(tar.extractfile(f"{key}.png").read()))
    assert meta["caption"] == caption and 0 <= meta["label"] <= 9
    assert image.size == (32, 32) and image.mode == "RGB"
    assert (shards.zeroshot_dir / "classnames.txt").read_text().split()[7] == "seven"


def test_zeroshot_templates_never_appear_in_training():
    train_shapes = {t.replace("{word}", "{c}").replace("{digit}", "{c}") for t in TRAIN_TEMPLATES}
    assert not train_shapes & set(ZEROSHOT_TEMPLATES)


def test_byte_tokenizer_keeps_eot_when_truncating():
    tok = ByteTokenizer(context_length=8)
    ids = tok(["Hi", "a long caption here"])
    assert ids[0].tolist() == [257, ord("h") + 1, ord("i") + 1, 258, 0, 0, 0, 0]
    assert ids[1, -1] == 258 and ids[1, 0] == 257
    assert int(np.argmax(ids[1])) == 7  # EOT is the largest id: the pooling position


def test_shards_split_between_processes_without_overlap():
    urls = expand_urls("/d/{000..009}.tar::/e/x.tar")
    assert len(urls) == 11
    parts = [process_shards(urls, 3, 0, True, i, 3) for i in range(3)]
    assert sorted(url for part in parts for url in part) == sorted(urls)
    assert process_shards(urls, 3, 0, True, 0, 3) == parts[0]
    with pytest.raises(ValueError, match="cannot be split between 12 processes"):
        process_shards(urls, 0, 0, True, 0, 12)


def _decoder(size: int, crop_scale=(1.0, 1.0)) -> PairDecoder:
    return PairDecoder(
        transform=ImageTransform(size, (0,) * 3, (1,) * 3, crop_scale != (1.0, 1.0), crop_scale),
        image_keys=("png",),
        text_key="txt",
        max_pixels=10_000,
        seed=(0,),
    )


def _png(color=0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (color, color, color)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_corrupt_and_captionless_samples_are_counted_not_fatal(tmp_path):
    path = tmp_path / "mixed.tar"
    with tarfile.open(path, "w") as tar:
        members = [
            ("a.png", _png()),
            ("a.txt", b"good"),
            ("b.png", b"not a png"),
            ("b.txt", b"bad image"),
            ("c.png", _png(9)),
            ("d.png", _png(3)),
            ("d.txt", b"also good"),
            ("e.pickle", b"\x80\x04K\x01."),
            ("e.txt", b"x"),
        ]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stats = DataStats()
    stream = SampleStream([str(path)], seed=0, mode="once", stats=stats)
    loader = PairLoader(stream, _decoder(8), tokenizer=ByteTokenizer(16), batch_size=2, stats=stats)
    batches = [batch for batch, _ in loader]
    assert len(batches) == 1 and batches[0]["image"].shape == (2, 8, 8, 3)
    assert stats.skipped_samples == 3  # b: corrupt image, c: no caption, e: no allowed image
    assert stats.failed_shards == 0


def test_truncated_shard_is_counted(tmp_path, digits_cache):
    source = build_digits_shards(digits_cache).train_urls()[0]
    data = Path(source).read_bytes()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[: len(data) // 3 + 100])
    stats = DataStats()
    samples = list(SampleStream([str(broken)], seed=0, mode="once", stats=stats))
    assert 0 < len(samples) < 512
    assert stats.failed_shards == 1


def test_unreadable_data_everywhere_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    for mode in ("epoch", "resampled"):
        stream = SampleStream([str(empty)], seed=0, mode=mode)
        with pytest.raises(RuntimeError, match="no sample could be read"):
            next(iter(stream))


def test_decompression_bomb_and_disallowed_keys():
    buffer = io.BytesIO()
    Image.new("L", (200, 200)).save(buffer, format="PNG")
    with pytest.raises(BadSample, match="exceeds max_pixels=1000"):
        load_image(buffer.getvalue(), max_pixels=1000)
    with pytest.raises(ValueError, match="not decodable"):
        parse_keys("png;pyd")
    assert read_text({"json": b'{"caption": "a cat"}'}, "json.caption") == "a cat"
    with pytest.raises(BadSample, match="empty caption"):
        read_text({"txt": b"  "}, "txt")


def test_same_seed_same_order(digits_cache):
    urls = build_digits_shards(digits_cache).train_urls()

    def keys(seed):
        stream = SampleStream(urls, seed=seed, shuffle_buffer=100)
        return [s["__key__"] for s, _ in zip(stream, range(300), strict=False)]

    assert keys(1) == keys(1)
    assert keys(1) != keys(2)


def test_random_resized_crop_is_seeded_and_shaped():
    image = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))
    transform = ImageTransform(16, (0.5,) * 3, (0.5,) * 3, train=True, crop_scale=(0.3, 1.0))
    a = transform(image, np.random.default_rng(0))
    b = transform(image, np.random.default_rng(0))
    assert a.shape == (16, 16, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert a.min() >= -1.0 and a.max() <= 1.0


def test_prefetch_reraises_producer_errors():
    def broken():
        yield 1
        raise OSError("disk gone")

    iterator = Prefetch(broken())
    assert next(iterator) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(iterator)


def test_on_device_normalisation_equals_the_host_one():
    """The loader ships uint8; the jitted step normalises as the host did, floats pass."""
    import jax

    from clipjax.data.pixels import pixel_normalizer

    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    transform = ImageTransform(8, mean, std, train=False)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    on_device = jax.jit(pixel_normalizer(mean, std))
    host = transform.normalize(pixels)
    np.testing.assert_allclose(on_device(pixels), host, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(on_device(host), host)

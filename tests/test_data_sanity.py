"""Unusable data stops the run early with the members it saw; skips are summarised per
shard instead of one warning per sample."""

import io
import json
import logging
import tarfile

import pytest
from PIL import Image
from test_cli_train import train_tiny

from clipjax.data.decode import ImageTransform
from clipjax.data.loader import PairLoader
from clipjax.data.pipeline import PairDecoder
from clipjax.data.shards import DataStats, SampleStream
from clipjax.data.skips import SkipMonitor, UnusableData
from clipjax.data.tokenizers import ByteTokenizer


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (40, 80, 120)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(path, count: int, captionless: int = 0) -> str:
    """`count` samples with png, txt and json members; the first `captionless` lack txt."""
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            members = {"png": _png(), "json": json.dumps({"caption": "c", "label": i}).encode()}
            if i >= captionless:
                members["txt"] = b"a caption"
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{path.stem}-{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def loader(urls, image_key="png", text_key="txt", window=100) -> PairLoader:
    decoder = PairDecoder(
        transform=ImageTransform(8, (0,) * 3, (1,) * 3, False),
        image_keys=(image_key,),
        text_key=text_key,
        max_pixels=10_000,
        seed=(0,),
    )
    stats = DataStats()
    return PairLoader(
        SampleStream(urls, seed=0, mode="once", stats=stats),
        decoder,
        tokenizer=ByteTokenizer(16),
        batch_size=4,
        stats=stats,
        skips=SkipMonitor(0.5, window, f"image_key={image_key!r}, text_key={text_key!r}"),
    )


def test_a_wrong_image_key_stops_within_the_window_naming_the_members(tmp_path):
    urls = [write_shard(tmp_path / f"s{i}.tar", 80) for i in range(2)]
    with pytest.raises(UnusableData) as caught:
        list(loader(urls, image_key="jpg"))
    message = str(caught.value)
    assert message.startswith("51 of the first 51 samples could not be used")
    assert "most often (51 x): none of the members ['jpg']" in message
    for member in ("json (", "png (", "txt ("):
        assert member in message


def test_a_wrong_json_field_names_the_fields_present(tmp_path):
    urls = [write_shard(tmp_path / "s.tar", 120)]
    with pytest.raises(UnusableData) as caught:
        list(loader(urls, text_key="json.nosuchfield"))
    message = str(caught.value)
    assert "unreadable text 'json.nosuchfield': KeyError: 'nosuchfield'" in message
    assert message.endswith("their json members have the fields: caption, label")


def test_skips_are_counted_and_summarised_once_per_shard(tmp_path, caplog):
    urls = [write_shard(tmp_path / "a.tar", 20, 3), write_shard(tmp_path / "b.tar", 20, 2)]
    run = loader(urls)
    with caplog.at_level(logging.WARNING, logger="clipjax.data.skips"):
        batches = list(run)
    assert len(batches) == 35 // 4 and run.stats.skipped_samples == 5  # 35 decoded
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines  # the first skip and a summary, per shard
    summaries = sorted(line for line in lines if "sample(s) skipped" in line)
    assert [s.split(": ", 1)[1] for s in summaries] == [
        "3 sample(s) skipped: 3 x none of the members ['txt']",
        "2 sample(s) skipped: 2 x none of the members ['txt']",
    ]


def test_training_on_the_wrong_image_key_exits_2_at_once(tmp_path, digits_cache, capsys):
    code = train_tiny(tmp_path, digits_cache, "--config.data.image_key='jpg'")
    assert code == 2
    err = capsys.readouterr().err
    assert "clipjax: unusable data: 501 of the first 501 samples could not be used" in err
    assert "png (" in err and "data.image_key='jpg'" in err

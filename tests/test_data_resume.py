"""Streaming order: host split, exact resume, worker-count independence, bad data."""

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipjax.data.decode import ImageTransform
from clipjax.data.loader import PairLoader
from clipjax.data.pipeline import PairDecoder
from clipjax.data.shards import DataStats, SampleStream
from clipjax.data.tokenizers import ByteTokenizer


def _image(value: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (value % 256, (value * 7) % 256, 3)).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture(scope="module")
def shard_urls(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    urls = []
    for shard in range(7):
        members = []
        for i in range(9 + shard):  # uneven shard sizes
            key = f"s{shard}-{i:03d}"
            members += [(f"{key}.png", _image(shard * 31 + i)), (f"{key}.txt", key.encode())]
        urls.append(_write_tar(root / f"{shard:05d}.tar", members))
    return urls


def _loader(urls, mode="epoch", state=None, workers=0, process=(0, 1), buffer=16):
    stats = DataStats()
    stream = SampleStream(
        urls,
        seed=3,
        mode=mode,
        shuffle_buffer=buffer,
        process_index=process[0],
        process_count=process[1],
        stats=stats,
    )
    decoder = PairDecoder(
        transform=ImageTransform(8, (0.5,) * 3, (0.5,) * 3, train=True, crop_scale=(0.4, 1.0)),
        image_keys=("png",),
        text_key="txt",
        max_pixels=10_000,
        seed=(3, process[0]),
    )
    return PairLoader(
        stream,
        decoder,
        tokenizer=ByteTokenizer(16),
        batch_size=5,
        workers=workers,
        stats=stats,
        state=state,
    )


def _take(loader: PairLoader, count: int) -> list[tuple[dict, dict]]:
    iterator = iter(loader)
    out = [next(iterator) for _ in range(count)]
    iterator.close()
    return out


def _assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (x, _), (y, _) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["text"], y["text"])
        np.testing.assert_array_equal(x["image"], y["image"])


def test_two_hosts_read_disjoint_shards_covering_everything(shard_urls):
    epoch_keys = []
    for process in range(2):
        stream = SampleStream(
            shard_urls, seed=1, mode="once", process_index=process, process_count=2
        )
        epoch_keys.append([s["__key__"] for s in stream])
    first, second = (set(keys) for keys in epoch_keys)
    assert not first & second
    assert len(first | second) == sum(9 + shard for shard in range(7))
    shards_of = [{key.split("-")[0] for key in keys} for keys in epoch_keys]
    assert not shards_of[0] & shards_of[1]


def test_epoch_mode_reads_every_sample_once_per_epoch(shard_urls):
    total = sum(9 + shard for shard in range(7))
    stream = SampleStream(shard_urls, seed=1, mode="epoch", shuffle_buffer=1)
    keys = [next(stream)["__key__"] for _ in range(2 * total)]
    assert len(set(keys[:total])) == total and set(keys[total:]) == set(keys[:total])
    assert keys[:total] != keys[total:]  # a new shard order each epoch


@pytest.mark.parametrize("mode", ["epoch", "resampled"])
@pytest.mark.parametrize("stop_after", [1, 4, 13])
def test_resumed_loader_yields_exactly_the_next_batches(shard_urls, mode, stop_after):
    straight = _take(_loader(shard_urls, mode), stop_after + 6)
    state = straight[stop_after - 1][1]
    resumed = _take(_loader(shard_urls, mode, state=_json_round_trip(state)), 6)
    _assert_same_batches(resumed, straight[stop_after:])


def test_worker_processes_give_the_same_batches_and_states(shard_urls):
    inline = _take(_loader(shard_urls, "resampled"), 8)
    pooled = _take(_loader(shard_urls, "resampled", workers=2), 8)
    _assert_same_batches(inline, pooled)
    assert [s for _, s in inline] == [s for _, s in pooled]
    resumed = _take(_loader(shard_urls, "resampled", state=pooled[2][1], workers=2), 5)
    _assert_same_batches(resumed, inline[3:])


def test_state_from_another_stream_is_refused(shard_urls):
    state = _take(_loader(shard_urls), 2)[1][1]
    with pytest.raises(ValueError, match="saved with mode='epoch'"):
        _take(_loader(shard_urls, "resampled", state=state), 1)
    with pytest.raises(ValueError, match="saved with urls="):
        _take(_loader(shard_urls[:-1], state=state), 1)


def _json_round_trip(state: dict) -> dict:
    import json

    return json.loads(json.dumps(state))


class _WritesFile:
    """Unpickling this would create `target` (the attack the allow-list prevents)."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def test_bad_members_and_truncated_tar_are_skipped_and_counted(tmp_path, shard_urls):
    target = tmp_path / "written-by-unpickling"
    truncated_jpeg = _image(5, "JPEG")[:60]
    bad = _write_tar(
        tmp_path / "bad.tar",
        [
            ("good1.png", _image(1)),
            ("good1.txt", b"fine one"),
            ("trunc.jpg", truncated_jpeg),
            ("trunc.txt", b"truncated jpeg"),
            ("textonly.txt", b"no image here"),
            ("x.pyd", pickle.dumps(_WritesFile(str(target)))),
            ("x.txt", b"pickle posing as an extension module"),
            ("good2.png", _image(2)),
            ("good2.txt", b"fine two"),
        ],
    )
    with tarfile.open(shard_urls[0]) as tar:
        fifth_image = tar.getmembers()[8]  # s0-004.png
        assert fifth_image.name == "s0-004.png"
    cut = tmp_path / "cut.tar"
    cut.write_bytes(Path(shard_urls[0]).read_bytes()[: fifth_image.offset_data + 20])
    stats = DataStats()
    stream = SampleStream([bad, str(cut)], seed=0, mode="once", stats=stats)
    decoder = PairDecoder(
        transform=ImageTransform(8, (0,) * 3, (1,) * 3, train=False),
        image_keys=("png", "jpg"),
        text_key="txt",
        max_pixels=10_000,
        seed=(0,),
    )
    loader = PairLoader(stream, decoder, tokenizer=ByteTokenizer(16), batch_size=1, stats=stats)
    texts = [_text(batch["text"][0]) for batch, _ in loader]
    assert texts == ["fine one", "fine two", "s0-000", "s0-001", "s0-002", "s0-003"]
    assert stats.skipped_samples == 3  # truncated jpeg, text-only, pickle-only image
    assert stats.failed_shards == 1  # the cut tar
    assert not target.exists()


def _text(ids: np.ndarray) -> str:
    return bytes(int(t) - 1 for t in ids if 1 <= t <= 256).decode()


def test_pipe_urls_stream_and_unreachable_shards_are_counted(shard_urls, tmp_path):
    stats = DataStats()
    urls = [
        f"pipe:cat {shard_urls[0]}",
        str(tmp_path / "missing.tar"),
        "pipe:exit 1",
        "http://127.0.0.1:9/refused.tar",
        shard_urls[1],
    ]
    keys = [s["__key__"] for s in SampleStream(urls, seed=0, mode="once", stats=stats)]
    assert len(keys) == 9 + 10 and keys[0] == "s0-000" and keys[-1] == "s1-009"
    assert stats.failed_shards == 3

"""Several sources mixed by weight (resumable), and shards behind fsspec URLs."""

import fsspec
import ml_collections
import pytest

from clipjax.data.loader import train_sources
from clipjax.data.mixing import MixedStream
from clipjax.data.shards import DataStats, SampleStream, check_openers
from clipjax.data.writer import write_shards


def _source(root, name: str, shards: int = 4, per_shard: int = 25) -> list[str]:
    samples = (
        {"__key__": f"{name}-{i:04d}", "txt": f"{name} {i}".encode()}
        for i in range(shards * per_shard)
    )
    return [str(p) for p in write_shards(samples, root / name, per_shard)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return _source(root, "alpha"), _source(root, "beta")


def _mixed(sources, mode: str, weights=(1.0, 3.0), stats=None) -> MixedStream:
    stats = stats or DataStats()
    streams = [
        SampleStream(urls, seed=i, mode=mode, shuffle_buffer=20, stats=stats)
        for i, urls in enumerate(sources)
    ]
    return MixedStream(streams, weights, seed=(0, 0, 7))


def _texts(stream, count: int) -> list[str]:
    return [next(stream)["txt"].decode() for _ in range(count)]


@pytest.mark.parametrize("mode", ["epoch", "resampled"])
def test_mixing_follows_the_weights(sources, mode):
    texts = _texts(_mixed(sources, mode), 4000)
    beta = sum(t.startswith("beta") for t in texts) / len(texts)
    assert abs(beta - 0.75) < 0.03, beta
    alpha = [t for t in texts if t.startswith("alpha")]
    if mode == "epoch":  # each source goes through its own epochs (buffer of 20 across them)
        assert set(alpha[:150]) == {f"alpha {i}" for i in range(100)}


@pytest.mark.parametrize("mode", ["epoch", "resampled"])
def test_mixed_stream_resumes_exactly(sources, mode):
    straight = _mixed(sources, mode)
    expected = _texts(straight, 700)
    first = _mixed(sources, mode)
    head = _texts(first, 333)
    resumed = _mixed(sources, mode)
    resumed.restore(first.state())
    assert head + _texts(resumed, 367) == expected


def test_mixed_state_refuses_other_weights(sources):
    state = _mixed(sources, "epoch").state()
    with pytest.raises(ValueError, match="mixing weights"):
        _mixed(sources, "epoch", weights=(1.0, 1.0)).restore(state)
    with pytest.raises(ValueError, match="must all be positive"):
        _mixed(sources, "epoch", weights=(1.0, 0.0))


def test_weights_split_the_spec_into_sources(sources):
    alpha, beta = sources
    spec = f"{alpha[0].rsplit('/', 1)[0]}/{{00000..00003}}.tar::{beta[0]}"
    config = ml_collections.ConfigDict(
        dict(source="shards", train_shards=spec, weights=(2.0, 1.0), cache_dir="", image_size=8)
    )
    assert train_sources(config) == [alpha, beta[:1]]
    config.weights = ()
    assert train_sources(config) == [alpha + beta[:1]]
    config.weights = (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="3 entries for 2"):
        train_sources(config)


def test_shards_behind_an_fsspec_url(sources):
    alpha, _ = sources
    memory = fsspec.filesystem("memory")
    urls = []
    for index, path in enumerate(alpha):
        url = f"memory://bucket/alpha/{index:05d}.tar"
        with memory.open(url, "wb") as out, open(path, "rb") as data:
            out.write(data.read())
        urls.append(url)
    stats = DataStats()
    remote = list(SampleStream(urls, seed=0, mode="once", shuffle_shards=False, stats=stats))
    local = list(SampleStream(alpha, seed=0, mode="once", shuffle_shards=False))
    assert [s["txt"] for s in remote] == [s["txt"] for s in local] and len(remote) == 100
    assert stats.failed_shards == 0
    missing = list(SampleStream(["memory://bucket/none.tar"], seed=0, mode="once", stats=stats))
    assert missing == [] and stats.failed_shards == 1


def test_missing_fsspec_backend_is_named_before_training():
    check_openers(["/local/a.tar", "pipe:cat a.tar", "https://h/a.tar", "memory://b/a.tar"])
    with pytest.raises(ValueError, match="gcsfs"):
        check_openers(["gs://bucket/shards/00000.tar"])
    with pytest.raises(ValueError, match="nope://"):
        check_openers(["nope://x/a.tar"])


def test_train_loader_mixes_digit_sources_and_resumes(tiny_config, digits_cache):
    """The loader the trainer builds, with two weighted sources, continues exactly."""
    import numpy as np

    from clipjax.data.loader import train_loader
    from clipjax.data.tokenizers import build_tokenizer
    from clipjax.data.writer import build_digits_shards

    train = build_digits_shards(digits_cache).root / "train"
    config = tiny_config
    config.data.source = "shards"
    config.data.train_shards = f"{train}/{{00000..00003}}.tar::{train}/{{00004..00009}}.tar"
    config.data.weights = (1.0, 2.0)
    config.data.shuffle_buffer = 32
    config.train.batch_size = 16
    tokenizer = build_tokenizer(config.tokenizer)

    def batches(state=None, count=5):
        iterator = iter(train_loader(config, tokenizer, DataStats(), state))
        taken = [next(iterator) for _ in range(count)]
        iterator.close()
        return taken

    straight = batches()
    resumed = batches(state=straight[1][1], count=3)
    for (want, _), (got, _) in zip(straight[2:], resumed, strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["text"], got["text"])
    assert straight[0][1]["states"]["0"]["stream"]["mixed"]


def test_gzipped_shards_and_a_corrupt_one(sources, tmp_path):
    import gzip
    from pathlib import Path

    alpha, _ = sources
    packed = tmp_path / "alpha-0.tar.gz"
    packed.write_bytes(gzip.compress(Path(alpha[0]).read_bytes()))
    stats = DataStats()
    assert len(list(SampleStream([str(packed)], seed=0, mode="once", stats=stats))) == 25
    broken = bytearray(packed.read_bytes())
    broken[len(broken) // 2 : len(broken) // 2 + 64] = bytes(64)  # zlib.error, not OSError
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(bytes(broken))
    samples = list(SampleStream([str(bad)], seed=0, mode="once", stats=stats))
    assert len(samples) < 25 and stats.failed_shards == 1

"""Each training example's stable number: shard x samples_per_shard + position, the same
on any process split, worker count, shuffle and resume."""

import numpy as np
import pytest

from clipjax.data.example_index import ExampleIndex
from clipjax.data.mixing import MixedStream
from clipjax.data.shards import SampleStream
from tests.test_data_resume import _loader, _take, shard_urls  # noqa: F401

PER_SHARD = 16  # the fixture's shards hold 9..15 samples, keyed "s{shard}-{position:03d}"


def _expected(key: str, first_shard: int = 0) -> int:
    shard, position = key.removeprefix("s").split("-")
    return (first_shard + int(shard)) * PER_SHARD + int(position)


def test_every_sample_gets_its_shard_and_position(shard_urls):  # noqa: F811
    index = ExampleIndex(PER_SHARD, [len(shard_urls)])
    for process in range(2):
        stream = SampleStream(
            shard_urls, seed=4, mode="once", shuffle_buffer=8, process_index=process,
            process_count=2,
        )  # fmt: skip
        for sample in stream:
            assert index(sample) == _expected(sample["__key__"])
    assert index.size == 7 * PER_SHARD


def test_mixed_sources_number_their_shards_after_the_earlier_sources(shard_urls):  # noqa: F811
    first, second = shard_urls[:3], shard_urls[3:]
    index = ExampleIndex(PER_SHARD, [len(first), len(second)])
    streams = [SampleStream(urls, seed=1, mode="resampled") for urls in (first, second)]
    mixed = MixedStream(streams, (1.0, 1.0), (0,))
    for _ in range(60):
        sample = next(mixed)
        assert index(sample) == _expected(sample["__key__"])  # shard names are global


def _ids(urls, **kwargs):
    loader = _loader(urls, "resampled", **kwargs)
    loader.example_index = ExampleIndex(PER_SHARD, [len(urls)])
    return _take(loader, 8)


def test_batches_carry_the_numbers_on_any_worker_count_and_after_a_resume(shard_urls):  # noqa: F811
    inline = _ids(shard_urls)
    pooled = _ids(shard_urls, workers=2)
    resumed = _ids(shard_urls, state=inline[2][1])[:5]
    for got in (pooled, [*inline[:3], *resumed]):
        for (a, _), (b, _) in zip(inline, got, strict=True):
            np.testing.assert_array_equal(a["index"], b["index"])
    assert inline[0][0]["index"].dtype == np.int32
    numbers = np.concatenate([batch["index"] for batch, _ in inline])
    assert len(set(numbers.tolist())) > 10  # distinct examples, not a constant


def test_a_shard_longer_than_samples_per_shard_is_named(shard_urls):  # noqa: F811
    index = ExampleIndex(10, [len(shard_urls)])
    stream = SampleStream(shard_urls, seed=0, mode="once", shuffle_shards=False)
    with pytest.raises(
        ValueError,
        match=r"00002.tar has more than data.samples_per_shard=10 samples \(sample 11 is .s2-010",
    ):
        for sample in stream:
            index(sample)


def test_an_index_past_int32_is_refused():
    with pytest.raises(ValueError, match="at most 2147483647 fit an int32 index"):
        ExampleIndex(10_000, [300_000])

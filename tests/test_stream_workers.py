"""Training streams read by worker processes into shared memory (`data.workers` > 0):
the same batches and states as inline for any worker count, exact resume across worker
counts, and a clear error (never a hang) when a worker dies or fails."""

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from clipjax.data.batch_slots import InOrderRelease, shared_dir
from clipjax.data.loader import train_loader
from clipjax.data.shards import DataStats
from clipjax.data.skips import UnusableData
from clipjax.data.stream_workers import DataWorkerDied, StreamWorkers
from clipjax.data.tokenizers import build_tokenizer
from clipjax.data.writer import build_digits_shards


@pytest.fixture
def config(tiny_config, digits_cache):
    train = build_digits_shards(digits_cache).root / "train"
    c = tiny_config
    c.data.source = "shards"
    c.data.train_shards = f"{train}/{{00000..00009}}.tar"
    c.data.shuffle_buffer = 24
    c.data.streams = 4
    c.data.samples_per_shard = 512  # batches also carry example numbers
    c.train.batch_size = 16
    return c


def _batches(config, workers: int, count: int, state=None, stats=None):
    config.data.workers = workers
    loader = train_loader(config, build_tokenizer(config.tokenizer), stats or DataStats(), state)
    iterator = iter(loader)
    taken = []
    for _ in range(count):  # copied one by one: each batch's shared slot is freed at once
        batch, state = next(iterator)
        taken.append(({k: np.array(v) for k, v in batch.items()}, state))
    iterator.close()
    return loader, taken


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same(want, got, states=True):
    assert len(want) == len(got)
    for (wb, ws), (gb, gs) in zip(want, got, strict=True):
        assert wb.keys() == gb.keys() == {"image", "text", "index"}
        for name in wb:
            np.testing.assert_array_equal(wb[name], gb[name], err_msg=name)
        assert ws == gs or not states  # a resumed position is written from a later snapshot


def test_any_worker_count_gives_the_inline_batches_and_states(config):
    inline_loader, inline = _batches(config, 0, 5)
    assert not isinstance(inline_loader, StreamWorkers)
    for workers in (1, 3, 4):
        loader, pooled = _batches(config, workers, 5)
        assert isinstance(loader, StreamWorkers) and len(loader.assignment) == workers
        _assert_same(inline, pooled)


def test_resume_on_another_worker_count_continues_exactly(config):
    _, straight = _batches(config, 2, 6)
    for workers in (0, 1, 4):
        _, resumed = _batches(config, workers, 3, state=straight[2][1])
        _assert_same(straight[3:], resumed, states=False)


def test_more_workers_than_streams_run_one_per_stream(config, caplog):
    config.data.streams = 2
    loader, pooled = _batches(config, 5, 2)
    assert len(loader.assignment) == 2
    assert "data.workers=5 but this process reads 2 data stream(s)" in caplog.text
    _, inline = _batches(config, 0, 2)
    _assert_same(inline, pooled)


def test_stream_counters_add_up_and_resume(config, tmp_path):
    """Each stream keeps its own counters; the process's are their sum, on any workers."""
    train = Path(config.data.train_shards.split("/{")[0])
    (tmp_path / "broken0.tar").write_bytes(b"not a tar at all" * 64)
    config.data.train_shards = f"{train}/{{00000..00006}}.tar::{tmp_path}/broken0.tar"
    config.data.samples_per_shard = None
    config.data.max_skipped_fraction = 1.0
    results = {}
    for workers in (0, 2):
        stats = DataStats()
        _, taken = _batches(config, workers, 150, stats=stats)  # each stream: 2 shards
        per_stream = [s["stats"]["failed_shards"] for s in taken[-1][1]["states"].values()]
        assert stats.failed_shards == sum(per_stream) >= 1
        results[workers] = (stats.failed_shards, taken[-1][1])
    assert results[0] == results[2]


def test_a_killed_worker_is_named_instead_of_waited_for(config):
    config.data.workers = 2
    loader = train_loader(config, build_tokenizer(config.tokenizer), DataStats())
    iterator = iter(loader)
    next(iterator)
    victim = loader.processes[1]
    os.kill(victim.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(DataWorkerDied, match=r"data worker 1 \(pid \d+, streams 1, 3\) was killed"):
        for _ in range(50):
            next(iterator)
    assert time.monotonic() - started < 30
    assert all(p.exitcode is not None for p in loader.processes)


def test_a_worker_error_keeps_its_type_and_names_the_worker(config):
    """A wrong image key in every sample: the worker's UnusableData reaches the trainer."""
    config.data.image_key = "webp"  # a real image member, absent here
    config.data.sanity_samples = 8
    with pytest.raises(UnusableData, match=r"data\.image_key='webp'") as raised:
        _batches(config, 2, 3)
    assert any("raised in data worker" in note for note in raised.value.__notes__)


def test_workers_ignore_sigterm_so_the_main_process_decides(config):
    """A preempted job signals every process: the workers keep going."""
    config.data.workers = 2
    loader = train_loader(config, build_tokenizer(config.tokenizer), DataStats())
    iterator = iter(loader)
    next(iterator)
    for process in loader.processes:
        os.kill(process.pid, signal.SIGTERM)
    _take(iterator, 4)
    assert all(p.is_alive() for p in loader.processes)
    iterator.close()


def test_held_batches_give_an_error_not_a_hang_and_the_file_is_removed(config):
    config.data.workers = 2
    before = set(os.listdir(shared_dir()))
    loader = train_loader(config, build_tokenizer(config.tokenizer), DataStats())
    iterator = iter(loader)
    held = _take(iterator, loader.slot_count)  # every slot still referenced
    assert len({id(b["image"]) for b, _ in held}) == loader.slot_count
    with pytest.raises(RuntimeError, match="still holds all shared batch slots"):
        next(iterator)
    iterator.close()
    leftover = {n for n in set(os.listdir(shared_dir())) - before if n.startswith("clipjax-")}
    assert not leftover


def test_released_batches_free_their_slots_in_order():
    freed = []
    release = InOrderRelease(freed.append)
    for batch in (2, 0, 3, 1, 5):
        release(batch)
    assert freed == [0, 1, 2, 3] and release.next == 4


def _half_a_message(writer):
    """A worker killed while writing: a length header, then part of the bytes."""
    import struct

    os.write(writer.fileno(), struct.pack("!i", 4096) + b"partial")
    os._exit(0)


def test_a_worker_gone_mid_message_is_named_instead_of_waited_for():
    import multiprocessing
    from types import SimpleNamespace

    from clipjax.data.stream_workers import _Inbox

    context = multiprocessing.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_half_a_message, args=(writer,))
    process.start()
    writer.close()
    workers = SimpleNamespace(processes=[process], assignment=[[0, 2]], slot_count=8)
    inbox = _Inbox([reader], workers, InOrderRelease(lambda _: None))
    with pytest.raises(DataWorkerDied, match=r"data worker 0 \(pid \d+, streams 0, 2\) exited"):
        inbox.batch(0)


def test_a_release_during_a_release_is_passed_on_not_waited_for():
    """A collection inside `free` can finalize another batch on the same thread."""
    freed = []

    def free(batch):
        freed.append(batch)
        if batch == 0:
            release(2)

    release = InOrderRelease(free)
    release(1)
    release(0)
    assert freed == [0, 1, 2] and release.next == 3


def test_a_process_block_of_streams_gives_its_rows_of_the_one_process_batch(config):
    """Process 1 of 2 reads streams 2 and 3 in workers: its batches are the second half
    of one process's batches over all 4 streams, and its states continue them."""
    from clipjax.data.loader import batch_layout, train_sources
    from clipjax.data.stream_workers import WorkerTask

    _, whole = _batches(config, 0, 3)
    tokenizer = build_tokenizer(config.tokenizer)
    task = WorkerTask(config, tokenizer, train_sources(config.data), 4, 2, batch_layout(config))
    iterator = iter(StreamWorkers(task, range(2, 4), {}, 2, DataStats()))
    for want, state in whole:
        got, got_state = next(iterator)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name][8:], err_msg=name)
        assert got_state["states"] == {j: state["states"][j] for j in ("2", "3")}
        del got
    iterator.close()

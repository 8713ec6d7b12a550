"""A process's training streams read by worker processes into shared-memory batches.

Worker w owns a fixed set of the process's streams (`streams[w::workers]`) and does
everything for them: tar reading, the shuffle buffer, decoding, augmentation,
tokenisation and batching, each stream exactly as `stream_loader` does inline. It writes
its streams' rows of batch n into shared slot n % slots and sends the streams' states
(a few hundred bytes). The main process waits until every worker has written batch n
and yields numpy views of the slot: it copies no pixels. A stream's batches depend only
on the stream, so they are the same for any worker count, and the states resume as the
inline loader's do.

Workers ignore SIGINT and SIGTERM (a preempted job signals every process; the main
process decides) and stop when the main process does. A worker that exits without
saying why is named in a `DataWorkerDied` error, never waited for.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import multiprocessing
import pickle
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import connection
from typing import Any

import numpy as np

from clipjax.data.batch_slots import BatchSlots, InOrderRelease, Layout, SlotFormat
from clipjax.data.loader import add_stream_stats, stream_loader
from clipjax.data.shards import DataStats
from clipjax.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)

SLOTS = 8  # batches in shared memory: the consumer's prefetch plus the workers' lead
POLL_SECONDS = 1.0  # how often a waiting process checks that the other side is alive


class DataWorkerDied(RuntimeError):
    """A data worker process ended without sending a batch, an end or an error."""


@dataclass(frozen=True)
class WorkerTask:
    """What every worker of a process needs to build its streams (pickled to it)."""

    config: Any  # the run's ConfigDict
    tokenizer: Tokenizer
    sources: list[list[str]]
    count: int  # the run's streams
    first: int  # this process's first stream: stream j fills rows from (j - first) * rows
    layout: Layout

    @property
    def rows(self) -> int:
        """Examples per stream per batch."""
        return self.config.train.batch_size // self.count


class StreamWorkers:
    """Yields `(batch, state)` like `StreamGroup` for the streams `owned`, read by
    `workers` processes; `stats` is kept at the sum of the streams' counters."""

    def __init__(
        self,
        task: WorkerTask,
        owned: range,
        states: dict[int, dict],
        workers: int,
        stats: DataStats,
        numbering: dict | None = None,
        slots: int = SLOTS,
    ):
        if not 1 <= workers <= len(owned):
            raise ValueError(f"{workers} data workers for {len(owned)} streams")
        self.task = task
        self.owned = owned
        self.assignment = [list(owned)[w::workers] for w in range(workers)]
        self.states = states
        self.stats = stats
        self.numbering = numbering or {}
        self.slot_count = slots
        self.format = SlotFormat(task.layout, task.rows * len(owned))
        self.processes: list = []  # the running workers, while iterating

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
        slots = BatchSlots.create(self.format, self.slot_count)
        context = multiprocessing.get_context("spawn")
        frees = [context.Semaphore(self.slot_count) for _ in self.assignment]
        release = InOrderRelease(lambda _: [free.release() for free in frees])
        pipes = [context.Pipe(duplex=False) for _ in self.assignment]  # one writer each
        self.processes = [
            context.Process(
                target=_work,
                args=(self.task, w, streams, self._states_of(streams), slots.path, self.format),
                kwargs=dict(slot_count=self.slot_count, results=pipes[w][1], free=frees[w]),
                name=f"clipjax-data-{w}",
                daemon=True,
            )
            for w, streams in enumerate(self.assignment)
        ]
        for process, (_, writer) in zip(self.processes, pipes, strict=True):
            with _main_module_hidden():
                process.start()
            writer.close()  # the worker's end: its exit, even mid-message, reads as EOF here
        inbox = _Inbox([reader for reader, _ in pipes], self, release)
        try:
            for n in itertools.count():
                states = inbox.batch(n)
                if states is None:
                    return
                if n == 0:  # every worker has mapped the file: no name can leak past a crash
                    slots.remove()
                add_stream_stats(states, self.stats)
                batch = slots.lend(n % self.slot_count, functools.partial(release, n))
                yield batch, {"streams": self.task.count, "states": states, **self.numbering}
        finally:
            for process in self.processes:
                process.kill()
            for process in self.processes:
                process.join(timeout=10)
            for reader, _ in pipes:
                reader.close()
            slots.remove()

    def _states_of(self, streams: list[int]) -> dict[int, dict]:
        return {j: self.states[j] for j in streams if j in self.states}


class _Inbox:
    """The main process's side of the workers' pipes: each batch's states, in order."""

    def __init__(self, readers: list, workers: StreamWorkers, release: InOrderRelease):
        self.readers = readers
        self.workers = workers
        self.release = release
        self.pending: dict[int, dict[int, dict]] = {}  # batch -> worker -> stream states
        self.ends: dict[int, int] = {}  # worker -> the first batch it could not fill

    def batch(self, n: int) -> dict[str, dict] | None:
        """Batch n's stream states in stream order, or None when a stream has ended."""
        while True:
            if self.ends and n >= min(self.ends.values()):
                return None
            parts = self.pending.get(n, {})
            if len(parts) == len(self.readers):
                del self.pending[n]
                merged = {k: v for part in parts.values() for k, v in part.items()}
                return dict(sorted(merged.items(), key=lambda item: int(item[0])))
            waiting = [r for w, r in enumerate(self.readers) if w not in parts]
            ready = connection.wait(waiting, timeout=POLL_SECONDS)
            for reader in ready:
                self._receive(self.readers.index(reader), n)
            if not ready:
                self._check_slots(n)

    def _receive(self, w: int, n: int) -> None:
        try:
            message = self.readers[w].recv()
        except (EOFError, OSError):
            self._died(w, n)
        kind, *rest = message
        if kind == "batch":
            batch, states = rest
            self.pending.setdefault(batch, {})[w] = states
        elif kind == "end":
            self.ends[w] = rest[0]
        else:
            payload, trace = rest
            log.error("data worker %d (streams %s) failed:\n%s", w, self._streams(w), trace)
            error = pickle.loads(payload)
            error.add_note(f"raised in data worker {w} (streams {self._streams(w)})")
            raise error

    def _died(self, w: int, n: int) -> None:
        process = self.workers.processes[w]
        process.join(timeout=5)
        code = process.exitcode
        how = (
            f"was killed by signal {-code}"
            if code is not None and code < 0
            else f"exited (code {code})"
        )
        raise DataWorkerDied(
            f"data worker {w} (pid {process.pid}, streams {self._streams(w)}) {how} "
            f"before batch {n} was complete; the run cannot continue without its streams"
        )

    def _check_slots(self, n: int) -> None:
        """Raises instead of waiting when the workers cannot write: no slot is free."""
        if n - self.release.next >= self.workers.slot_count:
            gc.collect()  # a reference cycle may still hold a batch
            if n - self.release.next >= self.workers.slot_count:
                raise RuntimeError(
                    f"batch {n} cannot be written: the consumer still holds all "
                    "shared batch slots (keep fewer batches alive, or copy them)"
                )

    def _streams(self, w: int) -> str:
        return ", ".join(map(str, self.workers.assignment[w]))


def _work(
    task: WorkerTask,
    w: int,
    streams: list[int],
    states: dict[int, dict],
    path: str,
    fmt: SlotFormat,
    *,
    slot_count: int,
    results,
    free,
) -> None:
    """A worker's loop: its streams' batches into the shared slots, in batch order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    outbox = _Outbox(results)
    try:
        slots = BatchSlots(path, fmt, slot_count)
        _fill(task, w, streams, states, slots, outbox, free)
    except BaseException as exc:
        outbox.put(("error", _portable(exc), traceback.format_exc()))
    finally:
        outbox.close()


class _Outbox:
    """Sends a worker's messages from a thread, so that decoding never waits for the
    main process to read (the slots bound how far ahead a worker gets)."""

    def __init__(self, connection):
        self.connection = connection
        self.messages: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def put(self, message: tuple) -> None:
        self.messages.put(message)

    def _send(self) -> None:
        while (message := self.messages.get()) is not None:
            try:
                self.connection.send(message)
            except OSError:  # the main process is gone
                return

    def close(self) -> None:
        self.messages.put(None)
        self.thread.join()


def _fill(task: WorkerTask, w: int, streams, states, slots: BatchSlots, outbox, free) -> None:
    rows, build = task.rows, functools.partial(stream_loader, task.config)
    loaders = {
        j: iter(build(j, task.count, task.tokenizer, states.get(j), task.sources)) for j in streams
    }
    for n in itertools.count():
        parts = {}
        for j, loader in loaders.items():
            part = next(loader, None)
            if part is None:
                outbox.put(("end", n))
                return
            parts[j] = part
        if not _acquire(free):
            return
        arrays = slots.arrays(n % slots.count)
        for j, (batch, _) in parts.items():
            start = (j - task.first) * rows
            for name, value in batch.items():
                arrays[name][start : start + rows] = value
        del arrays
        outbox.put(("batch", n, {str(j): state for j, (_, state) in parts.items()}))


@contextlib.contextmanager
def _main_module_hidden():
    """Starts a spawned worker without re-importing the parent's `__main__` (for
    `clipjax train`, the CLI with JAX and Flax: seconds and hundreds of MiB per worker).
    multiprocessing reads `__main__.__spec__` and `__file__` only while `start()` runs."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)
        if "__spec__" not in saved:
            del main.__spec__


def _acquire(free) -> bool:
    """Waits for a free slot; False when the main process is gone."""
    parent = multiprocessing.parent_process()
    while not free.acquire(timeout=POLL_SECONDS):
        if parent is not None and not parent.is_alive():
            return False
    return True


def _portable(exc: BaseException) -> bytes:
    """The exception pickled, or a RuntimeError with its text if it does not pickle."""
    try:
        payload = pickle.dumps(exc)
        pickle.loads(payload)
        return payload
    except Exception:
        return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))

"""A ring of batch buffers in shared memory, written by worker processes and read in place.

The buffers live in one file on a RAM-backed file system (`/dev/shm` where there is one),
mapped by every process. Slot n % count holds batch n. The reader hands out numpy views
of a slot and learns that the slot is free again when the last view of it (or anything
made from it, such as a zero-copy device array) is garbage collected; slots are
released in batch order, so a writer that waits for slot n % count never overwrites a
batch still in use.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Layout = dict[str, tuple[tuple[int, ...], np.dtype]]  # name -> (per-example shape, dtype)
_ALIGN = 64


@dataclass(frozen=True)
class SlotFormat:
    """Where each field of a `rows`-example batch lies inside one slot."""

    layout: Layout
    rows: int

    def fields(self) -> dict[str, tuple[int, tuple[int, ...], np.dtype]]:
        """name -> (byte offset in the slot, full shape, dtype)."""
        out, offset = {}, 0
        for name, (shape, dtype) in self.layout.items():
            dtype = np.dtype(dtype)
            full = (self.rows, *shape)
            out[name] = (offset, full, dtype)
            offset += _aligned(int(np.prod(full)) * dtype.itemsize)
        return out

    @property
    def nbytes(self) -> int:
        return sum(
            _aligned(int(np.prod(full)) * dtype.itemsize)
            for _, full, dtype in self.fields().values()
        )


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def shared_dir() -> str:
    """A RAM-backed directory where there is one (Linux), else the temporary directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class BatchSlots:
    """`count` slots of `fmt`, mapped from the file at `path`."""

    def __init__(self, path: str, fmt: SlotFormat, count: int):
        self.path, self.fmt, self.count = path, fmt, count
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), fmt.nbytes * count)

    @classmethod
    def create(cls, fmt: SlotFormat, count: int) -> BatchSlots:
        handle, path = tempfile.mkstemp(prefix="clipjax-batches-", dir=shared_dir())
        try:
            os.ftruncate(handle, fmt.nbytes * count)
        finally:
            os.close(handle)
        return cls(path, fmt, count)

    def arrays(self, slot: int) -> dict[str, np.ndarray]:
        """Fresh numpy views of slot `slot`'s fields (all sharing one base array)."""
        base = self._base(slot)
        return self._views(base)

    def _base(self, slot: int) -> np.ndarray:
        if not 0 <= slot < self.count:
            raise IndexError(f"batch slot {slot} of {self.count}")
        return np.ndarray((self.fmt.nbytes,), np.uint8, self._map, slot * self.fmt.nbytes)

    def _views(self, base: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name, (offset, full, dtype) in self.fmt.fields().items():
            size = int(np.prod(full)) * dtype.itemsize
            out[name] = base[offset : offset + size].view(dtype).reshape(full)
        return out

    def lend(self, slot: int, on_free: Callable[[], None]) -> dict[str, np.ndarray]:
        """Views of `slot`; `on_free()` runs once none of them is referenced any more."""
        base = self._base(slot)
        weakref.finalize(base, on_free).atexit = False
        return self._views(base)

    def remove(self) -> None:
        """Deletes the file; mappings that are still open stay valid until unmapped."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class InOrderRelease:
    """Turns slot releases that arrive in any order (garbage collection) into calls of
    `free(n)` in batch order: batch n is passed on only once batches 0..n-1 are.

    Safe from finalizers: a release that arrives on any thread, also while this thread
    is inside a release (a collection triggered there), is queued and passed on by
    whoever holds the lock, never waited for."""

    def __init__(self, free: Callable[[int], None]):
        self._free = free
        self._lock = threading.Lock()
        self._arrived: queue.SimpleQueue = queue.SimpleQueue()
        self._done: set[int] = set()
        self.next = 0  # the first batch not yet passed on

    def __call__(self, batch: int) -> None:
        self._arrived.put(batch)
        while not self._arrived.empty() and self._lock.acquire(blocking=False):
            try:
                while not self._arrived.empty():
                    self._done.add(self._arrived.get())
                while self.next in self._done:
                    self._done.remove(self.next)
                    self._free(self.next)
                    self.next += 1
            finally:
                self._lock.release()

"""Where a training step's wall time goes: waiting for data, the step itself, and
the host-to-device bytes it moved, averaged over the steps between two logs."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np


class StepClock:
    """Accumulates, between two `read`s, the seconds the loop blocked on the loader
    (`data`), the seconds spent in evals and checkpoints (`other`, left out of the
    step), and the host-to-device bytes of this process's batches.

    The step is dispatched asynchronously and the next batch is fetched while it runs,
    so a loader that keeps up costs no wait: `data_wait` is time the chips could not
    be given work. Compute is the rest of the wall time."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._steps = 0
        self._data = 0.0
        self._other = 0.0
        self._bytes = 0
        self._batches = 0

    def waited_for_data(self, seconds: float, batch: Mapping[str, np.ndarray]) -> None:
        self._data += seconds
        self._bytes += sum(int(np.asarray(v).nbytes) for v in batch.values())
        self._batches += 1

    def spent_elsewhere(self, seconds: float) -> None:
        self._other += seconds

    def stepped(self) -> None:
        self._steps += 1

    def read(self) -> dict[str, float]:
        """Per-step averages since the last read, and the host-to-device rate."""
        now = time.perf_counter()
        wall = max(now - self._start - self._other, 1e-9)
        steps = max(self._steps, 1)
        values = {
            "train/step_ms": 1e3 * wall / steps,
            "train/data_wait_ms": 1e3 * self._data / steps,
            "train/compute_ms": 1e3 * max(wall - self._data, 0.0) / steps,
            "train/data_wait_fraction": min(self._data / wall, 1.0),
            "train/h2d_bytes_per_step": self._bytes / max(self._batches, 1),
            "train/h2d_mb_per_sec": self._bytes / wall / 1e6,
        }
        self.__init__()
        return values

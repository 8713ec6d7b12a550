"""Preemption: SIGTERM means "save at the next step boundary and exit".

TPU maintenance, GKE and Slurm all send SIGTERM before killing a job. In a
multi-process run `jax.distributed`'s preemption sync manager owns the signal
and makes every process agree on the step (through Orbax's
`reached_preemption`); a single process without `jax.distributed` watches the
signal itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: the job stopped cleanly and should be restarted


class Preempted(Exception):
    """Raised after the checkpoint at `step` has been written because of SIGTERM."""

    def __init__(self, step: int):
        super().__init__(f"preempted: checkpoint saved at step {step}; rerun to resume")
        self.step = step


class PreemptionWatch:
    """`reached(step)` is True at the first step boundary after SIGTERM."""

    def __init__(self, distributed_check: Callable[[int], bool]):
        import jax  # not at module level: the CLI imports this before jax

        self.distributed = jax.distributed.is_initialized()
        self._distributed_check = distributed_check
        self._signalled = threading.Event()
        self._previous = None
        if not self.distributed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        log.warning("SIGTERM received: saving a checkpoint at the next step boundary")
        self._signalled.set()

    def reached(self, step: int) -> bool:
        if self.distributed:
            return self._distributed_check(step)
        return self._signalled.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

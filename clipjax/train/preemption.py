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
import socket
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
    """`reached(step)` is True at the first step boundary after SIGTERM.

    `on_signal()` is called as soon as SIGTERM arrives, from a thread that reads the
    signal's wakeup descriptor: a Python handler runs only when the main thread is back
    in Python, which a stuck data source or a hung call may never allow.
    """

    def __init__(
        self, distributed_check: Callable[[int], bool], on_signal: Callable[[], None] = lambda: None
    ):
        import jax  # not at module level: the CLI imports this before jax

        self.distributed = jax.distributed.is_initialized()
        self._distributed_check = distributed_check
        self._signalled = threading.Event()
        self._previous = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        if not self.distributed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
            self._listen(on_signal)

    def _listen(self, on_signal: Callable[[], None]) -> None:
        read, write = socket.socketpair()
        write.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
        self._wakeup = (read, write)

        def relay() -> None:
            while data := _recv(read):
                if signal.SIGTERM in data:
                    on_signal()

        threading.Thread(target=relay, daemon=True, name="clipjax-sigterm").start()

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
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            read, write = self._wakeup
            write.close()  # the relay thread reads end-of-file and returns
            read.close()
            self._wakeup = None


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(64)
    except OSError:  # closed by close()
        return b""

"""The stall watchdog: a thread that ends a run which cannot make progress.

The loop names the stage it is in (`data`, `step`, `eval`, `checkpoint`); when one
stage has lasted `train.stall_timeout` seconds (a stuck data source, a peer that
stopped answering inside a collective), the thread logs the stage, dumps every
thread's stack and exits `STALLED_EXIT_CODE`, so that a scheduler restarts the job
from its last checkpoint. After SIGTERM (`signalled`) it allows `grace` seconds for
the loop to reach a step boundary and save; a loop that cannot (every sample being
skipped, a hung compile) is ended with `PREEMPTED_EXIT_CODE` and a message naming
the stage. The process exits with `os._exit`: the main thread is the one that is
stuck, so nothing else would run.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from clipjax.train.preemption import PREEMPTED_EXIT_CODE

log = logging.getLogger(__name__)

STALLED_EXIT_CODE = 76  # one stage ran past train.stall_timeout: restart from a checkpoint


def check_watchdog(stall_timeout: float, preemption_grace: float) -> list[str]:
    """Problems with the `train.stall_timeout` / `train.preemption_grace` fields."""
    problems = []
    if stall_timeout < 0:
        problems.append(f"train.stall_timeout={stall_timeout} must be 0 (off) or seconds > 0")
    if preemption_grace <= 0:
        problems.append(f"train.preemption_grace={preemption_grace} must be seconds > 0")
    return problems


class Watchdog:
    def __init__(
        self,
        stall_timeout: float,
        grace: float,
        exit_process: Callable[[int], None] = os._exit,
        poll: float = 0.2,
    ):
        self.stall_timeout, self.grace = stall_timeout, grace
        self._exit = exit_process
        self._stage = ("start", time.monotonic())
        self._signalled_at: float | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, args=(poll,), daemon=True, name="clipjax-watchdog"
        )
        self._thread.start()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Times `name` until the block ends (the loop is then between stages)."""
        self._stage = (name, time.monotonic())
        try:
            yield
        finally:
            self._stage = ("loop", time.monotonic())

    def signalled(self) -> None:
        """SIGTERM arrived: the loop has `grace` seconds to reach a step boundary."""
        if self._signalled_at is None:
            self._signalled_at = time.monotonic()

    def boundary_reached(self) -> None:
        """The loop is saving for the signal: no more grace to count."""
        self._signalled_at = None

    def close(self) -> None:
        self._closed.set()
        self._thread.join()

    def _watch(self, poll: float) -> None:
        while not self._closed.wait(poll):
            name, since = self._stage
            now = time.monotonic()
            signalled = self._signalled_at
            if signalled is not None and now - signalled > self.grace:
                self._end(
                    PREEMPTED_EXIT_CODE,
                    f"SIGTERM {now - signalled:.0f} s ago and no step boundary reached: the "
                    f"run has been in stage '{name}' for {now - since:.0f} s; exiting without "
                    "a new checkpoint (a restart resumes from the latest one)",
                )
                return
            if self.stall_timeout and name != "loop" and now - since > self.stall_timeout:
                self._end(
                    STALLED_EXIT_CODE,
                    f"stalled: stage '{name}' has run for {now - since:.0f} s "
                    f"(train.stall_timeout={self.stall_timeout:g}); every thread's stack "
                    "follows; exiting so that the job restarts from its latest checkpoint",
                )
                return

    def _end(self, code: int, message: str) -> None:
        log.error(message)
        print(f"clipjax: {message}", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        self._exit(code)

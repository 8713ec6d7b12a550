"""`train.profile_steps=(start, end)`: a JAX profiler trace of those steps under
`workdir/profile`, which TensorBoard's profile plugin opens."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import jax

log = logging.getLogger(__name__)


def profile_problems(steps: tuple, total: int) -> list[str]:
    if steps == ():
        return []
    if (
        len(steps) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
        or not 1 <= steps[0] <= steps[1] <= total
    ):
        return [
            f"train.profile_steps={steps!r}: expected () or (start, end) with "
            f"1 <= start <= end <= train.steps={total}"
        ]
    return []


class ProfileWindow:
    """Starts the trace before step `start` and stops it once step `end` has run on
    the chips; each step in between is annotated with its number."""

    def __init__(self, steps: tuple, workdir: Path):
        self.start, self.end = steps if steps else (0, -1)
        self.directory = Path(workdir) / "profile"
        self.active = False

    def step(self, step: int):
        """A context for one step's dispatch; the caller settles `end` with `finish`."""
        if step == self.start:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self.active = True
        if not self.active:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def finish(self, step: int, outputs) -> None:
        if self.active and step == self.end:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self.active = False
            log.warning("profiler trace of steps %d-%d in %s", self.start, self.end, self.directory)

    def close(self) -> None:
        if self.active:  # the run ended or failed inside the window
            jax.profiler.stop_trace()
            self.active = False

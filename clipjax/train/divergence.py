"""The divergence guard: every step reports whether its loss, gradients and new
parameters are finite, and the loop acts on it before anything non-finite is saved.

Inside the step, `nonfinite_flags` packs the three checks into one int32 (0: all
finite), and with `train.on_nonfinite="skip"` `keep_if_finite` leaves parameters and
optimizer state as they were. On the host, `DivergenceGuard` reads a step's flag one
step behind (after the next step is dispatched, so the device never waits on the
host), and at once before a checkpoint or a log line.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

POLICIES = ("stop", "skip")
PARTS = ("loss", "gradients", "parameters")  # bit i of the flag: PARTS[i] was non-finite


class Diverged(FloatingPointError):
    """The run stopped on a non-finite step; nothing non-finite was checkpointed."""

    def __init__(self, step: int, parts: list[str], skipped_in_a_row: int = 0):
        what = ", ".join(parts)
        if skipped_in_a_row:
            message = (
                f"{skipped_in_a_row} steps in a row skipped (train.max_skipped_in_a_row), "
                f"the last at step {step}: non-finite {what}"
            )
        else:
            message = f"non-finite {what} at step {step}"
        super().__init__(
            f"{message}; no checkpoint holds it. Lower optim.lr, raise optim.warmup_steps or "
            "set optim.clip_norm"
        )
        self.step, self.parts = step, parts


def check_policy(on_nonfinite: str, max_skipped_in_a_row: int) -> list[str]:
    """Problems with the `train.on_nonfinite` / `train.max_skipped_in_a_row` fields."""
    problems = []
    if on_nonfinite not in POLICIES:
        problems.append(f"train.on_nonfinite={on_nonfinite!r} is not one of {POLICIES}")
    if max_skipped_in_a_row < 1:
        problems.append(f"train.max_skipped_in_a_row={max_skipped_in_a_row} must be at least 1")
    return problems


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def nonfinite_flags(loss: jax.Array, grad_norm: jax.Array, params) -> jax.Array:
    """An int32 with bit i set where `PARTS[i]` has a non-finite value. The gradients are
    judged by their global norm, which the step computes anyway: it is finite exactly
    when every gradient is (short of a norm past float32's range, itself a divergence)."""
    finite = (jnp.all(jnp.isfinite(loss)), jnp.isfinite(grad_norm), _all_finite(params))
    return sum(jnp.where(ok, 0, 1 << i) for i, ok in enumerate(finite)).astype(jnp.int32)


def keep_if_finite(flags: jax.Array, new, old):
    """`new` where the step was finite, else `old` (elementwise, so XLA fuses it into the
    optimizer update instead of holding a second copy of the state)."""
    return jax.tree.map(lambda n, o: jnp.where(flags == 0, n, o), new, old)


def describe(flags: int) -> list[str]:
    return [part for i, part in enumerate(PARTS) if flags >> i & 1]


class DivergenceGuard:
    """Host side: `observe(step, flags)` after dispatching each step; it settles the
    step before (one behind). `settle()` reads the pending step now (before a save or
    a log line). "stop" raises `Diverged` on the first non-finite step; "skip" counts
    it (the step itself kept the old state) and raises after `max_in_a_row` in a row."""

    def __init__(self, policy: str, max_in_a_row: int):
        self.policy, self.max_in_a_row = policy, max_in_a_row
        self.skipped = 0
        self.in_a_row = 0
        self.last_skipped_step = 0
        self._pending: tuple[int, jax.Array] | None = None

    def observe(self, step: int, flags: jax.Array) -> None:
        self.settle()
        self._pending = (step, flags)

    def settle(self) -> None:
        if self._pending is None:
            return
        step, flags = self._pending
        self._pending = None
        bits = int(jax.device_get(flags))
        if not bits:
            self.in_a_row = 0
            return
        parts = describe(bits)
        if self.policy == "stop":
            raise Diverged(step, parts)
        self.skipped += 1
        self.in_a_row += 1
        self.last_skipped_step = step
        log.warning(
            "step %d skipped: non-finite %s (%d in a row, %d in all); parameters unchanged",
            step, ", ".join(parts), self.in_a_row, self.skipped,
        )  # fmt: skip
        if self.in_a_row >= self.max_in_a_row:
            raise Diverged(step, parts, self.in_a_row)

"""Metrics: `workdir/metrics.jsonl`, TensorBoard event files, and the progress line."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np


def _scalar(value) -> float | int:
    value = np.asarray(value)
    return value.item() if value.size == 1 else float(value.mean())


class MetricWriter:
    """Appends one JSON object per logged step and mirrors scalars to TensorBoard.

    Only process 0 writes, so multi-host runs produce one file.
    """

    def __init__(self, workdir: str | os.PathLike, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict) -> dict:
        values = {key: _scalar(value) for key, value in metrics.items()}
        if self.active:
            self._file.write(json.dumps({"step": int(step), **values}) + "\n")
            if self._tb is not None:
                for key, value in values.items():
                    self._tb.add_scalar(key, value, int(step))
        return values

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


class Throughput:
    """Images per second since the last call, and the ETA of the run."""

    def __init__(self, total_steps: int, batch_size: int, start_step: int = 0):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.last_time = time.perf_counter()
        self.last_step = start_step

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self.last_time, 1e-9)
        steps_per_sec = (step - self.last_step) / elapsed
        self.last_time, self.last_step = now, step
        remaining = self.total_steps - step
        eta = remaining / steps_per_sec if steps_per_sec > 0 else math.inf
        return {
            "train/images_per_sec": steps_per_sec * self.batch_size,
            "train/steps_per_sec": steps_per_sec,
            "train/eta_sec": eta,
        }


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def progress_line(step: int, total: int, values: dict) -> str:
    loss = values.get("train/loss")  # absent from a step skipped as non-finite
    skipped = values.get("train/skipped_steps", 0)
    return (
        f"step {step:>6}/{total}  loss {'skipped' if loss is None else f'{loss:.4f}'}  "
        f"temp {values['train/temperature']:.4f}  "
        f"{values['train/images_per_sec']:,.0f} img/s"
        + (f"  MFU {100 * values['train/mfu']:.1f}%" if "train/mfu" in values else "")
        + (
            f"  data wait {100 * values['train/data_wait_fraction']:.0f}%"
            if "train/data_wait_fraction" in values
            else ""
        )
        + f"  ETA {format_eta(values['train/eta_sec'])}"
        + (f"  ({skipped} steps skipped)" if skipped else "")
    )


def print_progress(line: str) -> None:
    if jax.process_index() == 0:
        print(line, file=sys.stdout, flush=True)

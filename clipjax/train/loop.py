"""The trainer: build mesh, data, state and evals, then loop."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import ml_collections

from clipjax.config import save_config, validate
from clipjax.data.loader import prefetch, to_global, train_batches
from clipjax.data.shards import DataStats
from clipjax.data.tokenizers import build_tokenizer
from clipjax.evaluate.runner import Evaluator
from clipjax.losses import LossSpec
from clipjax.metrics import MetricWriter, Throughput, print_progress, progress_line
from clipjax.parallel import batch_sharding, build_mesh, rules_table
from clipjax.train.optim import build_optimizer, learning_rate_schedule
from clipjax.train.state import create_train_state
from clipjax.train.step import make_grad_fn, make_train_step

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    wall_seconds: float
    losses: list[float] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)
    params: dict | None = None


def _archive_previous_metrics(workdir: Path) -> None:
    """A fresh run keeps an earlier run's metrics under a new name instead of appending."""
    old = workdir / "metrics.jsonl"
    if jax.process_index() == 0 and old.exists():
        index = 1
        while (workdir / f"metrics.previous-{index}.jsonl").exists():
            index += 1
        old.rename(workdir / f"metrics.previous-{index}.jsonl")


def train(config: ml_collections.ConfigDict, workdir: str | Path, devices=None) -> TrainResult:
    """Trains `config` in `workdir` on `devices` (default: all) and returns the outcome."""
    started = time.perf_counter()
    workdir = Path(workdir)
    devices = list(jax.devices() if devices is None else devices)
    validate(config, len(devices), jax.process_count())
    save_config(config, workdir)

    mesh = build_mesh(config.mesh, devices)
    rules = rules_table(config.sharding_rules)
    tokenizer = build_tokenizer(config.tokenizer)
    stats = DataStats()
    batches = prefetch(train_batches(config, tokenizer, stats))

    schedule = learning_rate_schedule(config.optim, config.train.steps)
    tx = build_optimizer(config.optim, config.train.steps)
    spec, state, shardings = create_train_state(config.model, config.seed, tx, mesh, rules)

    def sharding_for(ndim: int):
        return batch_sharding(mesh, rules, ndim)

    batch_shardings = {"image": sharding_for(4), "text": sharding_for(2)}
    grad_fn = make_grad_fn(
        spec, LossSpec.from_config(config.loss), mesh, rules.get("batch"), config.train.accum_steps
    )
    step_fn = make_train_step(grad_fn, tx, shardings, batch_shardings, schedule)
    evaluator = Evaluator(config, spec, tokenizer, sharding_for, shardings.params)

    _archive_previous_metrics(workdir)
    writer = MetricWriter(workdir)
    result = TrainResult(steps=config.train.steps, wall_seconds=0.0)
    try:
        _loop(config, state, step_fn, batches, sharding_for, evaluator, writer, stats, result)
    finally:
        writer.close()
    result.wall_seconds = time.perf_counter() - started
    return result


def check_finite(step: int, values: dict) -> None:
    """Stops the run with the step and the offending metrics when the loss diverges."""
    bad = {k: float(v) for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite training metrics at step {step}: {bad}; lower optim.lr, "
            "raise optim.warmup_steps or set optim.clip_norm"
        )


def _loop(
    config, state, step_fn, batches, sharding_for, evaluator, writer, stats, result: TrainResult
) -> None:
    total = config.train.steps
    throughput = Throughput(total, config.train.batch_size)
    for step in range(1, total + 1):
        batch = to_global(next(batches), sharding_for)
        state, metrics = step_fn(state, batch)
        values = {}
        if step % config.train.log_every == 0 or step == total:
            values = {f"train/{k}": v for k, v in jax.device_get(metrics).items()}
            check_finite(step, values)
            values.update(throughput.update(step))
            values.update(stats.as_metrics())
            result.losses.append(float(values["train/loss"]))
            print_progress(progress_line(step, total, values))
        eval_metrics = evaluator.run(state.params, step)
        if values or eval_metrics:
            logged = writer.write(step, {**values, **eval_metrics})
            result.final_metrics.update(logged)
    result.params = state.params

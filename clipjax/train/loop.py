"""The trainer: build mesh, data, state, restore, then loop."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import ml_collections

from clipjax.checkpoint import Checkpoints
from clipjax.config import save_config
from clipjax.data.loader import Prefetch, batch_source
from clipjax.data.shards import DataStats
from clipjax.data.tokenizers import build_tokenizer
from clipjax.evaluate.runner import Evaluator
from clipjax.metrics import MetricWriter, Throughput, print_progress, progress_line
from clipjax.parallel import build_mesh
from clipjax.train.divergence import DivergenceGuard
from clipjax.train.init_from import initial_params
from clipjax.train.preemption import Preempted, PreemptionWatch
from clipjax.train.profile import ProfileWindow
from clipjax.train.program import StepProgram, build_step_program
from clipjax.train.state import StatePlan, state_as_dict, state_from_dict
from clipjax.train.step_clock import StepClock
from clipjax.train.utilisation import Utilisation, utilisation_for
from clipjax.train.validation_loss import make_batch_loss
from clipjax.train.watchdog import Watchdog
from clipjax.validation import validate

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    wall_seconds: float
    start_step: int = 0
    losses: list[float] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)
    params: dict | None = None


def checkpoints_for(config, workdir: Path) -> Checkpoints:
    c = config.checkpoint
    return Checkpoints(
        workdir / "checkpoints",
        every=c.every,
        keep=c.keep,
        keep_period=c.keep_period,
        async_save=c.async_save,
    )


def initial_state(config, plan: StatePlan, checkpoints: Checkpoints):
    """(state, this process's loader state or None, start step): the latest complete
    checkpoint if there is one, else a fresh init (with `init_from`'s params: a clipjax
    checkpoint or an HF CLIP directory, only `init_parts` if given)."""
    latest = checkpoints.latest_step()
    if latest is not None:
        restored = checkpoints.restore(latest, state_as_dict(plan.abstract))
        log.warning("resuming from the checkpoint at step %d", latest)
        return state_from_dict(restored.state), restored.loader, latest
    state = plan.init()
    if config.init_from:
        parts = tuple(config.get("init_parts", ()))
        loaded = initial_params(config, plan.abstract.params, parts)
        state = state.replace(params={**state.params, **loaded})
    return state, None, 0


def trim_metrics(workdir: Path, after_step: int) -> None:
    """Drops logged rows past the resumed step: the resumed run logs them again."""
    path = workdir / "metrics.jsonl"
    if jax.process_index() != 0 or not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _logged_step(line) <= after_step]
    if len(kept) != len(lines):
        path.write_text("".join(kept))


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return -1  # a torn last line from a killed run


def archive_metrics(workdir: Path) -> None:
    """A fresh run keeps an earlier run's metrics under a new name instead of appending."""
    old = workdir / "metrics.jsonl"
    if jax.process_index() == 0 and old.exists():
        index = 1
        while (workdir / f"metrics.previous-{index}.jsonl").exists():
            index += 1
        old.rename(workdir / f"metrics.previous-{index}.jsonl")


def note_budget(train_cfg) -> None:
    """Says when an explicit `train.steps` overrides the data budget `train.samples_seen`
    (a smoke run, or a shortened schedule): the run then trains another number of samples."""
    seen = train_cfg.get("samples_seen")
    planned = train_cfg.steps * train_cfg.batch_size
    if seen is not None and not 0 <= planned - seen < train_cfg.batch_size:
        log.warning(
            "training %s samples (train.steps=%d x train.batch_size=%d), not "
            "train.samples_seen=%s: train.steps was set",
            f"{planned:,}",
            train_cfg.steps,
            train_cfg.batch_size,
            f"{seen:,}",
        )


def train(config: ml_collections.ConfigDict, workdir: str | Path, devices=None) -> TrainResult:
    """Trains `config` in `workdir` on `devices` (default: all), resuming from the
    workdir's latest checkpoint, and returns the outcome."""
    started = time.perf_counter()
    workdir = Path(workdir)
    devices = list(jax.devices() if devices is None else devices)
    validate(config, len(devices), jax.process_count())
    note_budget(config.train)
    if jax.process_index() == 0:  # the files in workdir are process 0's; checkpoints are all's
        save_config(config, workdir)

    watchdog = Watchdog(config.train.stall_timeout, config.train.preemption_grace)
    run = None  # SIGTERM during setup is seen at once; its step boundary comes after it
    watch = PreemptionWatch(lambda step: run.checkpoints.reached(step), watchdog.signalled)
    try:
        with watchdog.stage("setup"):  # mesh, state plan, restore, eval sets
            run, state, start = _setup(config, workdir, devices, watchdog)
        writer = MetricWriter(workdir)
        try:
            state = run.loop(state, start, writer, watch)
        finally:
            run.batches.close()
            run.profile.close()
            writer.close()
            run.checkpoints.close()
    finally:
        watch.close()
        watchdog.close()
    run.result.params = state.params
    run.result.wall_seconds = time.perf_counter() - started
    return run.result


def _setup(config, workdir: Path, devices, watchdog: Watchdog):
    """(run, state, start step): the program, the restored state and the data."""
    program = build_step_program(config, build_mesh(config.mesh, devices))
    plan, sharding_for = program.plan, program.sharding_for
    # families without a text tower (Symile) have no tokenizer
    tokenizer = build_tokenizer(config.tokenizer) if "tokenizer" in config else None

    checkpoints = checkpoints_for(config, workdir)
    state, loader_state, start = initial_state(config, plan, checkpoints)
    if start:
        trim_metrics(workdir, start)
    else:
        archive_metrics(workdir)

    stats = DataStats()
    batches = Prefetch(iter(batch_source(config, tokenizer, stats, loader_state)))
    batch_loss = make_batch_loss(config, program.mesh, plan.spec, plan.shardings.params)
    evaluator = Evaluator(
        config, plan.spec, tokenizer, sharding_for, plan.shardings.params, batch_loss
    )
    result = TrainResult(steps=config.train.steps, wall_seconds=0.0, start_step=start)
    run = _Run(
        config,
        program,
        batches,
        evaluator,
        stats,
        checkpoints,
        result,
        watchdog,
        utilisation_for(config, devices),
        ProfileWindow(tuple(config.train.get("profile_steps", ())), workdir),
    )
    return run, state, start


@dataclass
class _Run:
    config: ml_collections.ConfigDict
    program: StepProgram
    batches: Prefetch
    evaluator: Evaluator
    stats: DataStats
    checkpoints: Checkpoints
    result: TrainResult
    watchdog: Watchdog
    utilisation: Utilisation | None
    profile: ProfileWindow
    clock: StepClock = field(default_factory=StepClock)

    def loop(self, state, start: int, writer: MetricWriter, watch: PreemptionWatch):
        total = self.config.train.steps
        throughput = Throughput(total, self.config.train.batch_size, start_step=start)
        guard = DivergenceGuard(
            self.config.train.on_nonfinite, self.config.train.max_skipped_in_a_row
        )
        if start == 0:  # evals with an interval also judge the initial params
            with self.watchdog.stage("eval"):
                initial = self.evaluator.run(state.params, 0)
            if initial:
                writer.write(0, initial)
        self.clock = StepClock()
        upcoming = self._next_batch() if start < total else None
        for step in range(start + 1, total + 1):
            batch, loader_state = upcoming
            with self.watchdog.stage("step" if step > start + 1 else "step (the first compiles)"):
                with self.profile.step(step):
                    state, metrics = self.program.step(state, batch)
                guard.observe(step, metrics.pop("nonfinite"))  # settles the step before
                self.profile.finish(step, state)
            self.clock.stepped()
            # device prefetch: the next batch's transfer overlaps this step's compute
            upcoming = self._next_batch() if step < total else None
            preempted = step < total and watch.reached(step)
            if preempted:
                self.watchdog.boundary_reached()
            force = preempted or step == total
            if force or self._logs(step) or self.checkpoints.due(step) or self.evaluator.due(step):
                with self.watchdog.stage("step"):
                    guard.settle()  # nothing non-finite is logged, evaluated or saved
            self._log(step, state, metrics, throughput, writer, guard)
            saving = time.perf_counter()
            with self.watchdog.stage("checkpoint"):
                self.checkpoints.save(step, state_as_dict(state), loader_state, force=force)
                if preempted:
                    self.checkpoints.wait()
            self.clock.spent_elsewhere(time.perf_counter() - saving)
            if preempted:
                raise Preempted(step)
        if start >= total:
            log.warning("the checkpoint is at step %d of %d: nothing left to train", start, total)
            with self.watchdog.stage("eval"):
                final = self.evaluator.run(state.params, total, force=True)
            self.result.final_metrics.update(writer.write(total, final))
        return state

    def _next_batch(self) -> tuple[dict, dict]:
        """The next batch as global device arrays, with the loader state after it."""
        with self.watchdog.stage("data"):
            waiting = time.perf_counter()
            batch, loader_state = next(self.batches)
            self.clock.waited_for_data(time.perf_counter() - waiting, batch)
            return self.program.place_batch(batch), loader_state

    def _logs(self, step: int) -> bool:
        return step % self.config.train.log_every == 0 or step == self.config.train.steps

    def _log(self, step: int, state, metrics, throughput, writer, guard: DivergenceGuard):
        values = {}
        if self._logs(step):
            with self.watchdog.stage("step"):
                values = {f"train/{k}": v for k, v in jax.device_get(metrics).items()}
            if guard.last_skipped_step == step:  # its loss is not finite; its state is old
                values = {k: v for k, v in values.items() if math.isfinite(v)}
            values["train/skipped_steps"] = guard.skipped
            values.update(throughput.update(step))
            values.update(self.clock.read())
            if self.utilisation is not None:
                values.update(self.utilisation.metrics(1e3 / values["train/step_ms"]))
            values.update(self.stats.as_metrics())
            self.result.losses.append(float(values.get("train/loss", math.nan)))
            print_progress(progress_line(step, self.config.train.steps, values))
        evaluating = time.perf_counter()
        with self.watchdog.stage("eval"):
            eval_metrics = self.evaluator.run(state.params, step)
        self.clock.spent_elsewhere(time.perf_counter() - evaluating)
        if values or eval_metrics:
            self.result.final_metrics.update(writer.write(step, {**values, **eval_metrics}))

"""Real signals against real training processes: SIGTERM saves and exits 75;
SIGKILL at random moments never costs more than the steps since the last
complete checkpoint, and the run still ends with the uninterrupted params."""

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipjax.checkpoint import read_params, resolve_step_dir
from clipjax.train.preemption import PREEMPTED_EXIT_CODE
from clipjax.train.watchdog import STALLED_EXIT_CODE

pytestmark = pytest.mark.processes  # several processes each; see pyproject

ROOT = Path(__file__).resolve().parent.parent


def _start(
    workdir: Path,
    cache: Path,
    steps: int,
    every: int,
    process: tuple[int, int, int] | None = None,
    *overrides: str,
) -> subprocess.Popen:
    """`clipjax train` in a subprocess with 2 CPU devices; `process` = (id, count, port)
    runs it as one process of a `jax.distributed` run."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    group = []
    if process is not None:
        index, count, port = process
        group = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={count}"]
        group += [f"--process_id={index}"]
    args = [
        sys.executable,
        "-m",
        "clipjax.cli",
        "train",
        *group,
        f"--config={ROOT / 'configs/default.py'}:tiny",
        f"--workdir={workdir}",
        f"--config.data.cache_dir={cache}",
        f"--config.train.steps={steps}",
        "--config.train.batch_size=16",
        "--config.train.log_every=1",
        "--config.data.shuffle_buffer=100",
        f"--config.checkpoint.every={every}",
        "--config.checkpoint.keep=2",
        *overrides,
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    attempt = len(list(workdir.glob("stderr-*")))
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=(workdir / f"stdout-{attempt}").open("w"),
        stderr=(workdir / f"stderr-{attempt}").open("w"),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _steps_logged(workdir: Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError):  # a line being written
            steps.append(json.loads(line)["step"])
    return steps


def _wait_for_step_after(process, workdir: Path, step: int, timeout: float = 180) -> bool:
    """True once a step > `step` is logged; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s > step for s in _steps_logged(workdir)):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"no step after {step} within {timeout} s; see {workdir}/stderr-*")


def _last_stderr(workdir: Path) -> str:
    return sorted(workdir.glob("stderr-*"), key=lambda p: int(p.name.split("-")[1]))[-1].read_text()


def test_sigterm_saves_at_the_step_reached_and_resume_continues(tmp_path, digits_cache):
    workdir = tmp_path / "run"
    stopped_at = 0
    for _ in range(2):
        process = _start(workdir, digits_cache, steps=2000, every=1000)
        assert _wait_for_step_after(process, workdir, stopped_at + 2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == PREEMPTED_EXIT_CODE, _last_stderr(workdir)
        err = _last_stderr(workdir)
        _, step = resolve_step_dir(workdir)
        assert f"preempted: checkpoint saved at step {step}" in err
        assert step > stopped_at + 2
        if stopped_at:
            assert f"resuming from the checkpoint at step {stopped_at}" in err
        logged = _steps_logged(workdir)
        assert logged == list(range(1, step + 1))  # resumed rows continue, none twice
        stopped_at = step


@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(tmp_path, digits_cache):
    """jax.distributed's preemption sync point: the signalled process and the other one
    save the same step together, exit 75, and both resume from it."""
    workdir = tmp_path / "run"
    port = _free_port()
    processes = [_start(workdir, digits_cache, 2000, 1000, process=(i, 2, port)) for i in range(2)]
    assert _wait_for_step_after(processes[0], workdir, 2)
    processes[1].send_signal(signal.SIGTERM)
    assert [p.wait(timeout=120) for p in processes] == [PREEMPTED_EXIT_CODE] * 2
    _, step = resolve_step_dir(workdir)
    loader_files = sorted(p.name for p in (workdir / f"checkpoints/{step}/loader").iterdir())
    assert loader_files[-2:] == ["process_0-of-2.json", "process_1-of-2.json"]
    for err in sorted(workdir.glob("stderr-*")):
        assert f"preempted: checkpoint saved at step {step}" in err.read_text()
    port = _free_port()
    processes = [_start(workdir, digits_cache, 2000, 1000, process=(i, 2, port)) for i in range(2)]
    assert _wait_for_step_after(processes[0], workdir, step)
    for p in processes:
        p.send_signal(signal.SIGTERM)
    assert [p.wait(timeout=120) for p in processes] == [PREEMPTED_EXIT_CODE] * 2
    assert _steps_logged(workdir) == list(range(1, resolve_step_dir(workdir)[1] + 1))
    assert "resuming from the checkpoint at step" in (workdir / "stderr-2").read_text()


@pytest.mark.slow
def test_a_peer_that_stops_answering_ends_the_other_within_the_stall_timeout(
    tmp_path, digits_cache
):
    """Process 1 is frozen (SIGSTOP) mid-run; process 0 waits inside the step's
    collectives until its watchdog ends it, naming the stage, well before the
    distributed heartbeat (60 s) would."""
    workdir = tmp_path / "run"
    port = _free_port()
    stall = "--config.train.stall_timeout=20"
    processes = [_start(workdir, digits_cache, 2000, 1000, (i, 2, port), stall) for i in range(2)]
    try:
        assert _wait_for_step_after(processes[0], workdir, 2)
        processes[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        code = processes[0].wait(timeout=120)
        waited = time.monotonic() - stopped
    finally:
        processes[1].kill()
    err = (workdir / "stderr-0").read_text()
    assert code == STALLED_EXIT_CODE, err
    assert "stalled: stage 'step' has run for 20 s (train.stall_timeout=20)" in err
    assert 20 <= waited < 50, waited


def _kill_and_resume(tmp_path, cache, kills: int, steps: int = 300) -> None:
    straight = tmp_path / "straight"
    assert _start(straight, cache, steps, every=2).wait(timeout=600) == 0
    reference, _ = read_params(straight)

    workdir, rng, killed, resumed_from = tmp_path / "killed", random.Random(0), 0, []
    while True:
        process = _start(workdir, cache, steps, every=2)
        logged_before = max(_steps_logged(workdir), default=0)
        if killed < kills and _wait_for_step_after(process, workdir, logged_before):
            time.sleep(rng.uniform(0.0, 1.0))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed += 1
                resumed_from.append(_latest_loadable(workdir))
                continue
        assert process.wait(timeout=600) == 0, _last_stderr(workdir)
        break
    assert killed == kills and any(resumed_from)
    if resumed_from[-1]:
        assert f"resuming from the checkpoint at step {resumed_from[-1]}" in _last_stderr(workdir)
    final, step = read_params(workdir)
    assert step == steps
    for name, value in reference.items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)
    assert _losses(workdir) == _losses(straight)


def _latest_loadable(workdir: Path) -> int:
    """The step a restart will resume from (0: none yet), checked to load."""
    try:
        _, latest = resolve_step_dir(workdir)
    except FileNotFoundError:
        return 0  # killed before the first save completed: the restart begins afresh
    read_params(workdir, latest)
    return latest


def _losses(workdir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["train/loss"]) for row in rows if "train/loss" in row]


@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_sigkill_during_training_and_saves_resumes_to_the_same_params(tmp_path, digits_cache):
    _kill_and_resume(tmp_path, digits_cache, kills=2, steps=80)


@pytest.mark.slow
def test_sigkill_six_times_resumes_to_the_same_params(tmp_path, digits_cache):
    _kill_and_resume(tmp_path, digits_cache, kills=6, steps=120)

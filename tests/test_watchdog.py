"""A run that cannot make progress ends within a bound, naming where it stuck: a data
source that never answers (train.stall_timeout) and SIGTERM while every sample is being
skipped (train.preemption_grace), each against a real `clipjax train` process."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipjax.train.preemption import PREEMPTED_EXIT_CODE
from clipjax.train.watchdog import STALLED_EXIT_CODE, Watchdog

ROOT = Path(__file__).resolve().parent.parent


def start_training(workdir: Path, cache: Path, *overrides: str) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable, "-m", "clipjax.cli", "train",
        f"--config={ROOT / 'configs/default.py'}:tiny", f"--workdir={workdir}",
        f"--config.data.cache_dir={cache}", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(workdir / "stderr").open("w")
    )


def wait_for_text(process, path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        assert process.poll() is None, path.read_text()
        time.sleep(0.1)
    process.kill()
    raise TimeoutError(f"{text!r} not in {path} within {timeout} s")


@pytest.mark.slow  # 40 s: setup, then the 30 s timeout
def test_a_data_source_that_never_answers_ends_the_run_naming_the_stage(tmp_path, digits_cache):
    fifo = tmp_path / "shard-000.tar"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: none will
    process = start_training(
        tmp_path / "run", digits_cache,
        "--config.data.source='shards'", f"--config.data.train_shards='{fifo}'",
        "--config.train.stall_timeout=30",
    )  # fmt: skip
    started = time.monotonic()
    code = process.wait(timeout=240)
    err = (tmp_path / "run" / "stderr").read_text()
    assert code == STALLED_EXIT_CODE, err
    assert "stalled: stage 'data' has run for 30 s (train.stall_timeout=30)" in err
    assert "(most recent call first)" in err and "in _produce" in err  # the stacks
    # from the data stage's start: the setup before it (compile, eval sets) is not counted
    assert time.monotonic() - started < 200


def test_sigterm_while_every_sample_is_skipped_exits_within_the_grace(tmp_path, digits_cache):
    workdir = tmp_path / "run"
    process = start_training(
        workdir, digits_cache,
        "--config.data.image_key='jpg'", "--config.data.max_skipped_fraction=1.0",
        "--config.train.preemption_grace=3", "--config.train.stall_timeout=0",
    )  # fmt: skip
    wait_for_text(process, workdir / "stderr", "skipping sample")  # the loader is at work
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = process.wait(timeout=60)
    waited = time.monotonic() - sent
    err = (workdir / "stderr").read_text()
    assert code == PREEMPTED_EXIT_CODE, err
    # the loader starts during setup (its eval sets may still be loading) and the loop
    # then waits for data: either way no step can come
    assert re.search(r"no step boundary reached: the run has been in stage '(setup|data)'", err)
    assert 3 <= waited < 15, waited


def test_the_watchdog_ends_a_stage_past_the_timeout_and_not_before():
    ended = []
    watchdog = Watchdog(stall_timeout=0.5, grace=60, exit_process=ended.append, poll=0.05)
    with watchdog.stage("eval"):
        time.sleep(0.3)
    assert ended == []  # 0.3 s, then between stages: nothing timed
    time.sleep(0.7)
    assert ended == []
    with watchdog.stage("checkpoint"):
        time.sleep(1.0)
    watchdog.close()
    assert ended == [STALLED_EXIT_CODE]

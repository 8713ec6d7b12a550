"""Real multi-process runs on this machine: the local launcher, srun's variables,
and one process dying under another."""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipjax.data.writer import build_digits_shards

pytestmark = pytest.mark.processes  # several processes each; see pyproject

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ROOT / "launch" / "local.py"


def _local_launcher():
    spec = importlib.util.spec_from_file_location("launch_local", LOCAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _logged_shard_spec(cache: Path, log: Path) -> str:
    """The digits shards as `pipe:` URLs whose command first records which process read
    which shard: the reads are observed, not inferred from the shard assignment."""
    shards = sorted((build_digits_shards(cache).root / "train").glob("*.tar"))
    last = shards[-1].stem
    spec = f"{shards[0].parent}/{{{shards[0].stem}..{last}}}.tar"
    record = f'echo "${{JAX_PROCESS_ID}} $(basename $0)" >> {log}; exec cat "$0"'
    return f"pipe:sh -c '{record}' {spec}"


def _train_args(workdir: Path, shards: str, steps: int, *extra: str) -> list[str]:
    return [
        "train",
        f"--config={ROOT / 'configs/default.py'}:tiny",
        f"--workdir={workdir}",
        "--config.data.source=shards",
        f"--config.data.train_shards={shards}",
        "--config.data.streams=2",
        "--config.data.shuffle_buffer=64",
        f"--config.train.steps={steps}",
        "--config.train.batch_size=32",
        "--config.train.log_every=1",
        "--config.checkpoint.every=4",
        "--config.checkpoint.keep=0",
        *extra,
    ]


def _launch(processes: int, devices: int, args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, str(LOCAL), f"--processes={processes}"]
    command += [f"--devices-per-process={devices}", "--", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _final_evals(workdir: Path) -> dict[str, float]:
    last = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    return {k: v for k, v in last.items() if k.startswith("zeroshot/")}


def _reads(log: Path) -> dict[str, set[str]]:
    reads: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        process, shard = line.split()
        reads.setdefault(process, set()).add(shard)
    return reads


@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_two_processes_train_like_one_and_hand_over_their_checkpoint(tmp_path, digits_cache):
    """2 processes x 4 devices = 1 process x 8 devices, step for step, with each process
    reading its own shards; the 2-process checkpoint then resumes in 1 process."""
    two_log, one_log = tmp_path / "reads-2.log", tmp_path / "reads-1.log"
    two, one = tmp_path / "two", tmp_path / "one"
    _launch(2, 4, _train_args(two, _logged_shard_spec(digits_cache, two_log), 8))
    _launch(1, 8, _train_args(one, _logged_shard_spec(digits_cache, one_log), 8))

    two_losses, one_losses = _losses(two), _losses(one)
    assert sorted(two_losses) == list(range(1, 9))
    np.testing.assert_allclose(
        [two_losses[s] for s in range(1, 9)], [one_losses[s] for s in range(1, 9)], rtol=2e-5
    )
    # the final zero-shot eval, fed by both processes in padded global batches (360 images,
    # batch 256), equals the one-process eval
    evals_two, evals_one = _final_evals(two), _final_evals(one)
    assert sorted(evals_two) == sorted(evals_one) and "zeroshot/digits/top1" in evals_two
    for key, value in evals_one.items():
        assert evals_two[key] == pytest.approx(value, abs=2 / 360), key
    reads = _reads(two_log)
    assert sorted(reads) == ["0", "1"]
    assert reads["0"] and reads["1"] and not reads["0"] & reads["1"]
    assert list(_reads(one_log).values()) == [reads["0"] | reads["1"]]
    saved = sorted(p.name for p in (two / "checkpoints" / "4" / "loader").glob("*.json"))
    assert saved == ["process_0-of-2.json", "process_1-of-2.json"]

    handed = tmp_path / "handed"
    shutil.copytree(two, handed)
    shutil.rmtree(handed / "checkpoints" / "8")
    done = _launch(1, 8, _train_args(handed, _logged_shard_spec(digits_cache, two_log), 8))
    assert "resuming from the checkpoint at step 4" in done.stdout
    assert "starts afresh" not in done.stdout
    resumed = _losses(handed)
    np.testing.assert_allclose(
        [resumed[s] for s in range(5, 9)], [two_losses[s] for s in range(5, 9)], rtol=2e-5
    )


def _wait_for_rows(metrics: Path, rows: int, processes, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rows:
            return
        if any(p.poll() is not None for p in processes):
            pytest.fail(f"a process exited early: {[p.poll() for p in processes]}")
        time.sleep(0.2)
    pytest.fail(f"no {rows} metrics rows within {timeout} s")


@pytest.mark.parametrize("victim", [1])
@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_killing_one_process_stops_the_other_and_the_run_resumes(tmp_path, digits_cache, victim):
    launcher = _local_launcher()
    workdir = tmp_path / "run"
    spec = f"{build_digits_shards(digits_cache).root / 'train'}/{{00000..00003}}.tar"
    args = _train_args(workdir, spec, 400, "--config.checkpoint.every=2")
    args += ["--config.distributed.heartbeat_timeout=10"]
    commands = launcher.process_commands(2, 4, launcher.free_port(), args)
    logs = [(tmp_path / f"process-{i}.log").open("w") for i in range(2)]
    processes = [
        subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        for (argv, env), log in zip(commands, logs, strict=True)
    ]
    _wait_for_rows(workdir / "metrics.jsonl", 5, processes)
    processes[victim].kill()
    killed_at = time.monotonic()
    survivor = processes[1 - victim]
    try:
        code = survivor.wait(timeout=120)
    except subprocess.TimeoutExpired:
        survivor.kill()
        pytest.fail("the surviving process was still running 120 s after the other died")
    elapsed = time.monotonic() - killed_at
    output = (tmp_path / f"process-{1 - victim}.log").read_text()
    assert code != 0
    # The coordinator's heartbeat reports the dead peer; when the kill lands inside a
    # collective, gloo's transport aborts first on the torn message. Either stops the run.
    stopped_by = ("another task died", "Received data size doesn't match", "Connection closed")
    assert any(reason in output for reason in stopped_by), output[-2000:]
    print(f"survivor exited {code} after {elapsed:.1f} s")

    saved = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    resumed = _launch(2, 4, [*args, f"--config.train.steps={saved + 2}"])
    assert f"resuming from the checkpoint at step {saved}" in resumed.stdout
    assert sorted(_losses(workdir))[-1] == saved + 2


def test_two_processes_started_like_srun_train_together(tmp_path, digits_cache):
    """The variables srun sets for a 2-task step on one node, and nothing else."""
    launcher = _local_launcher()
    port = launcher.free_port()
    workdir = tmp_path / "run"
    spec = f"{build_digits_shards(digits_cache).root / 'train'}/{{00000..00003}}.tar"
    args = _train_args(workdir, spec, 3)
    processes = []
    for task in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
        env.update(
            JAX_PLATFORMS="cpu",
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_COORDINATOR_PORT=str(port),
            SLURM_JOB_ID="4242",
            SLURM_STEP_ID="0",
            SLURM_NTASKS="2",
            SLURM_STEP_NUM_TASKS="2",
            SLURM_STEP_NODELIST="localhost",
            SLURM_JOB_NODELIST="localhost",
            SLURM_PROCID=str(task),
            SLURM_LOCALID=str(task),
            SLURM_NODEID="0",
        )
        command = [sys.executable, "-m", "clipjax.cli", *args]
        log = (tmp_path / f"task-{task}.log").open("w")
        processes.append(
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
    codes = [p.wait(timeout=300) for p in processes]
    logs = [(tmp_path / f"task-{t}.log").read_text()[-2000:] for t in range(2)]
    assert codes == [0, 0], logs
    saved = sorted(p.name for p in (workdir / "checkpoints" / "3" / "loader").glob("*.json"))
    assert saved == ["process_0-of-2.json", "process_1-of-2.json"]
    assert sorted(_losses(workdir)) == [1, 2, 3]


def _slurm_cluster() -> bool:
    """A Slurm controller answers (`launch/slurm_local_cluster.sh` starts one; CI does)."""
    if not shutil.which("sbatch") or not os.environ.get("SLURM_CONF"):
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return done.returncode == 0 and "idle" in done.stdout


@pytest.mark.skipif(not _slurm_cluster(), reason="no Slurm cluster (SLURM_CONF unset)")
@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_slurm_batch_script_trains_on_a_real_cluster(tmp_path, digits_cache):
    """launch/slurm.sbatch under sbatch: srun starts 2 tasks that find each other."""
    workdir = tmp_path / "run"
    spec = f"{build_digits_shards(digits_cache).root / 'train'}/{{00000..00003}}.tar"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_"))}
    env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    exported = {
        "UV": shutil.which("uv") or "uv",
        "UV_PYTHON": sys.executable,  # the job's `uv sync` keeps this test run's environment
        "CLIPJAX_JAX_EXTRA": "",  # CPU nodes: no accelerator jax
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    command = [
        "sbatch", "--wait", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
        "--gpus-per-node=0", f"--output={tmp_path}/slurm-%j.out", f"--chdir={ROOT}",
        "--export=ALL," + ",".join(f"{k}={v}" for k, v in exported.items()),
        str(ROOT / "launch" / "slurm.sbatch"), *_train_args(workdir, spec, 3),
    ]  # fmt: skip
    command.remove("train")  # the script runs `clipjax train` itself
    installed = _installed_distributions()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    output = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert done.returncode == 0, done.stderr + output[-3000:]
    saved = sorted(p.name for p in (workdir / "checkpoints" / "3" / "loader").glob("*.json"))
    assert saved == ["process_0-of-2.json", "process_1-of-2.json"]
    assert sorted(_losses(workdir)) == [1, 2, 3]
    assert installed - _installed_distributions() == set()  # the job's sync removed nothing


def _installed_distributions() -> set[str]:
    """The distributions installed in this test run's environment, by name."""
    return {d.metadata["Name"] for d in importlib.metadata.distributions()}

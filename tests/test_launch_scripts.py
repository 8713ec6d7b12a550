"""The launchers' dry runs: what they would run on a TPU pod, Slurm and Kubernetes."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"


def _run(*command: str, env: dict | None = None) -> str:
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_local_dry_run_gives_each_process_its_id_and_devices():
    out = _run(
        sys.executable, str(LAUNCH / "local.py"), "--dry-run", "--processes=3",
        "--devices-per-process=2", "--port=5555", "--", "train", "--workdir=/tmp/w",
    )  # fmt: skip
    lines = out.splitlines()
    assert len(lines) == 3
    for index, line in enumerate(lines):
        words = shlex.split(line)
        env = dict(w.split("=", 1) for w in words[:5])
        assert env == {
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "JAX_COORDINATOR_ADDRESS": "127.0.0.1:5555",
            "JAX_NUM_PROCESSES": "3",
            "JAX_PROCESS_ID": str(index),
        }
        assert words[6:] == ["-m", "clipjax.cli", "train", "--workdir=/tmp/w"]


def _tpu(*extra: str) -> list[str]:
    out = _run(
        sys.executable, str(LAUNCH / "tpu_pod.py"), "--dry-run", "--name=clip-v4",
        "--zone=us-central2-b", "--accelerator-type=v4-32", "--bucket=gs://my-bucket",
        "--run=b16", *extra, "--", "--config", "configs/clip/vit_b16.py",
        "--config.data.train_shards=/data/{00000..00099}.tar",
    )  # fmt: skip
    return out.splitlines()


def test_tpu_pod_dry_run_creates_copies_sets_up_and_trains_on_every_worker():
    lines = _tpu()
    assert lines[0] == "# v4-32: 4 worker(s), each runs one clipjax process"
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    create, archive, copy, setup, train = commands
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "clip-v4"]
    assert "--accelerator-type=v4-32" in create and "--zone=us-central2-b" in create
    assert archive[-1] == "HEAD" and archive[0] == "git"
    assert copy[4] == "scp" and "--worker=all" in copy
    for command in (setup, train):
        assert command[4] == "ssh" and "--worker=all" in command
    setup_script = setup[-1].removeprefix("--command=")
    assert "uv sync --locked" in setup_script and "jax[tpu]==" in setup_script
    assert "gcsfuse --implicit-dirs --rename-dir-limit=200000 my-bucket $HOME/gcs/my-bucket" in (
        setup_script
    )
    train_words = shlex.split(train[-1].removeprefix("--command="), posix=True)
    assert train_words[train_words.index("train") + 1 :] == [
        "--distributed=jax",
        "--workdir=$HOME/gcs/my-bucket/b16",
        "--config",
        "configs/clip/vit_b16.py",
        "--config.data.train_shards=/data/{00000..00099}.tar",
    ]


def test_tpu_pod_reuses_an_existing_vm_and_counts_hosts():
    commands = [line for line in _tpu("--assume-exists") if not line.startswith("#")]
    assert not any(" create " in line for line in commands) and len(commands) == 4
    sys.path.insert(0, str(LAUNCH))
    try:
        from tpu_pod import tpu_hosts
    finally:
        sys.path.remove(str(LAUNCH))
    assert [tpu_hosts(t) for t in ("v4-8", "v4-32", "v5p-128", "v5litepod-8", "v6e-64")] == [
        1, 4, 16, 1, 16,
    ]  # fmt: skip


def test_slurm_dry_run_starts_clipjax_under_srun():
    env = {**os.environ, "DRY_RUN": "1", "UV": "uv"}
    out = _run("bash", str(LAUNCH / "slurm.sbatch"), "--workdir", "/shared/run 1", env=env)
    setup, gpu, train = (shlex.split(line) for line in out.splitlines())
    assert setup == ["uv", "sync", "--locked", "--inexact"]
    assert "jax[cuda12]==" in gpu[-1]
    assert train == [
        "srun", "uv", "run", "--no-sync", "clipjax", "train", "--workdir", "/shared/run 1",
    ]  # fmt: skip
    cpu = _run("bash", str(LAUNCH / "slurm.sbatch"), env={**env, "CLIPJAX_JAX_EXTRA": ""})
    assert [shlex.split(line)[0] for line in cpu.splitlines()] == ["uv", "srun"]
    header = (LAUNCH / "slurm.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in header and "#SBATCH --signal=TERM@" in header


def _jobset(*target: str) -> dict:
    out = _run(
        sys.executable, str(LAUNCH / "k8s_jobset.py"), "--name=b16", "--image=reg/clipjax:1",
        "--bucket=gs://bkt", *target, "--", "--config", "configs/clip/vit_b16.py",
    )  # fmt: skip
    return json.loads(out)


def test_jobset_wires_every_pod_to_the_coordinator():
    spec = _jobset("--tpu=v5litepod-16")
    assert spec["kind"] == "JobSet"
    (workers,) = spec["spec"]["replicatedJobs"]
    job = workers["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 4
    assert job["completionMode"] == "Indexed"
    pod = job["template"]["spec"]
    assert pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "4x4"
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JAX_COORDINATOR_ADDRESS"]["value"] == "b16-workers-0-0.b16:8476"
    assert env["JAX_NUM_PROCESSES"]["value"] == "4"
    index = env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "job-completion-index" in index
    assert container["resources"]["limits"] == {"google.com/tpu": "4"}
    assert container["command"] == [
        "clipjax", "train", "--workdir=/workdir/b16", "--config", "configs/clip/vit_b16.py",
    ]  # fmt: skip
    attributes = pod["volumes"][0]["csi"]["volumeAttributes"]
    assert attributes["bucketName"] == "bkt" and "rename-dir-limit" in attributes["mountOptions"]


def test_jobset_for_gpu_nodes():
    spec = _jobset("--nodes=3", "--gpus-per-pod=8")
    job = spec["spec"]["replicatedJobs"][0]["template"]["spec"]
    container = job["template"]["spec"]["containers"][0]
    assert job["parallelism"] == 3
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["JAX_NUM_PROCESSES"] == "3"

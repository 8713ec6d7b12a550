#!/usr/bin/env python3
"""Trains on a Cloud TPU VM pod slice: every worker runs the same `clipjax train`.

    python launch/tpu_pod.py --name clip-v4 --zone us-central2-b \\
        --accelerator-type v4-32 --bucket my-bucket --run b16-run1 -- \\
        --config configs/clip/vit_b16.py --config.data.train_shards=...

Steps, each a `gcloud` command (`--dry-run` prints them and runs nothing):
1. reuse the TPU VM `--name` if it exists, else create it (`--spot` for a Spot VM);
2. pack this checkout's committed HEAD with `git archive` and copy it to every worker;
3. on every worker: install uv, `uv sync --locked` the project, add `jax[tpu]` at the
   locked JAX version, and mount the bucket with gcsfuse;
4. on every worker: `clipjax train --distributed=jax --workdir=<bucket mount>/<run>`.
   JAX reads the worker list from the TPU VM metadata, so no process needs an address.

The workdir lives in the bucket (mounted at the same path on every worker), so all
workers write one checkpoint and a restarted or recreated VM resumes from it. Rerun
the same command after a preemption. Standard library only; needs `gcloud` and `git`.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MOUNT = "$HOME/gcs"
# Orbax commits a checkpoint by renaming its temporary directory; gcsfuse renames
# non-empty directories of a flat bucket only below this many files inside.
RENAME_DIR_LIMIT = 200_000
GCSFUSE_INSTALL = (  # Google's apt repository for Cloud Storage FUSE
    'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
    'https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" '
    "| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && "
    "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg "
    "| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && "
    "sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse"
)


def tpu_hosts(accelerator_type: str) -> int:
    """Workers (hosts) of a slice: v2/v3/v4/v5p count TensorCores (8 per host);
    v5e/v6e count chips (4 per host, one host up to 8 chips)."""
    match = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v5e|v6e)-(\d+)", accelerator_type)
    if not match:
        raise ValueError(
            f"accelerator type {accelerator_type!r} is not one of v2/v3/v4/v5p/v5litepod/v6e-N"
        )
    family, size = match.group(1), int(match.group(2))
    if family in ("v2", "v3", "v4", "v5p"):
        return max(1, size // 8)
    return 1 if size <= 8 else size // 4


def _gcloud(args: argparse.Namespace, *words: str) -> list[str]:
    command = ["gcloud", "compute", "tpus", "tpu-vm", *words, args.name, f"--zone={args.zone}"]
    return command + ([f"--project={args.project}"] if args.project else [])


def _on_workers(args: argparse.Namespace, script: str) -> list[str]:
    return [*_gcloud(args, "ssh"), "--worker=all", f"--command={script}"]


def plan(args: argparse.Namespace, exists: bool) -> list[list[str]]:
    """The commands, in order, that set up the slice and start training on it."""
    archive = f"/tmp/clipjax-{args.name}.tar.gz"
    commands = []
    if not exists:
        create = [*_gcloud(args, "create"), f"--accelerator-type={args.accelerator_type}"]
        create += [f"--version={args.version}"] + (["--spot"] if args.spot else [])
        commands.append(create)
    commands.append(["git", "-C", str(ROOT), "archive", "--format=tar.gz", "-o", archive, "HEAD"])
    scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{args.name}:clipjax.tar.gz"]
    scp += ["--worker=all", f"--zone={args.zone}"]
    commands.append(scp + ([f"--project={args.project}"] if args.project else []))
    uv = "$HOME/.local/bin/uv"
    setup = " && ".join(
        [
            "set -e",
            "rm -rf $HOME/clipjax && mkdir -p $HOME/clipjax",
            "tar -xzf $HOME/clipjax.tar.gz -C $HOME/clipjax",
            f"(test -x {uv} || python3 -m pip install --user --quiet uv)",
            f"cd $HOME/clipjax && {uv} sync --locked --python {args.python}",
            f'{uv} pip install "jax[tpu]==$({uv} run --no-sync python -c '
            "'import jax; print(jax.__version__)')\"",
            f"(command -v gcsfuse >/dev/null || {GCSFUSE_INSTALL})",
            f"mkdir -p {MOUNT}/{args.bucket}",
            f"(mountpoint -q {MOUNT}/{args.bucket} || "
            f"gcsfuse --implicit-dirs --rename-dir-limit={RENAME_DIR_LIMIT} "
            f"{args.bucket} {MOUNT}/{args.bucket})",
        ]
    )
    commands.append(_on_workers(args, setup))
    workdir = f'--workdir="{MOUNT}/{args.bucket}/{args.run}"'  # names checked: no quoting
    train = [uv, "run", "--no-sync", "clipjax", "train", "--distributed=jax", workdir]
    train += [shlex.quote(word) for word in args.clipjax_args]
    commands.append(_on_workers(args, "cd $HOME/clipjax && " + " ".join(train)))
    return commands


def vm_exists(args: argparse.Namespace) -> bool:
    describe = [*_gcloud(args, "describe"), "--format=value(state)"]
    return subprocess.run(describe, capture_output=True, text=True).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="TPU VM name (reused if it exists)")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default=None)
    parser.add_argument("--accelerator-type", required=True, help="e.g. v4-32, v5litepod-16")
    parser.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM runtime image")
    parser.add_argument("--spot", action="store_true")
    parser.add_argument("--bucket", required=True, help="GCS bucket (no gs://) for the workdir")
    parser.add_argument("--run", required=True, help="run name: the workdir inside the bucket")
    parser.add_argument("--python", default="3.11")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--assume-exists", action="store_true", help="skip the describe check")
    parser.add_argument("clipjax_args", nargs=argparse.REMAINDER, help="-- then train's args")
    args = parser.parse_args(argv)
    if args.clipjax_args[:1] == ["--"]:
        args.clipjax_args = args.clipjax_args[1:]
    if args.bucket.startswith("gs://"):
        args.bucket = args.bucket[len("gs://") :].rstrip("/")
    for flag, value, pattern in (
        ("--bucket", args.bucket, r"[a-z0-9][a-z0-9._\-]{1,220}"),
        ("--run", args.run, r"[\w.\-]+"),
        ("--name", args.name, r"[a-z][a-z0-9\-]{0,61}"),
    ):
        if not re.fullmatch(pattern, value):
            parser.error(f"{flag}={value!r} has characters outside {pattern}")
    try:
        hosts = tpu_hosts(args.accelerator_type)
    except ValueError as exc:
        parser.error(str(exc))
    exists = args.assume_exists or (not args.dry_run and vm_exists(args))
    commands = plan(args, exists)
    print(f"# {args.accelerator_type}: {hosts} worker(s), each runs one clipjax process")
    if args.dry_run and not exists:
        print("# dry run: assumes the VM does not exist yet (--assume-exists to reuse it)")
    for command in commands:
        print(shlex.join(command))
        if not args.dry_run:
            done = subprocess.run(command)
            if done.returncode:
                return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())

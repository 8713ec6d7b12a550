#!/usr/bin/env python3
"""Runs `clipjax` as N processes on this machine, each with K CPU devices.

    python launch/local.py --processes 2 --devices-per-process 4 -- \\
        train --config configs/default.py:tiny --workdir /tmp/run

This is the multi-host setup on one machine: every process joins the same
`jax.distributed` group through 127.0.0.1 (gloo collectives), loads its own
share of the data and writes its own checkpoint shards. Output lines are
prefixed with the process id. When one process exits with an error the others
are given `--grace` seconds to stop by themselves (the distributed runtime's
heartbeat stops them) and are then killed. SIGTERM and SIGINT are passed on to
every process, so preemption works as it does on a pod. `--dry-run` prints the
commands instead. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _xla_flags(existing: str, devices: int) -> str:
    kept = [f for f in existing.split() if not f.startswith("--xla_force_host_platform_device")]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def process_commands(
    processes: int,
    devices_per_process: int,
    port: int,
    clipjax_args: list[str],
    python: str = sys.executable,
    base_env: dict[str, str] | None = None,
) -> list[tuple[list[str], dict[str, str]]]:
    """(argv, environment) of each process."""
    base = dict(os.environ if base_env is None else base_env)
    commands = []
    for index in range(processes):
        env = dict(base)
        env.update(
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=_xla_flags(base.get("XLA_FLAGS", ""), devices_per_process),
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES=str(processes),
            JAX_PROCESS_ID=str(index),
        )
        commands.append(([python, "-m", "clipjax.cli", *clipjax_args], env))
    return commands


def _relay(index: int, stream, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"[{index}] {line}")
        out.flush()


def run(commands: list[tuple[list[str], dict[str, str]]], grace: float) -> int:
    """Starts every process, relays their output, returns the first failure's exit code."""
    children = [
        subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        for argv, env in commands
    ]
    relays = [
        threading.Thread(target=_relay, args=(i, c.stdout, sys.stdout), daemon=True)
        for i, c in enumerate(children)
    ]
    for relay in relays:
        relay.start()

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed_at, code = None, 0
    while any(c.poll() is None for c in children):
        time.sleep(0.2)
        failures = [c.returncode for c in children if c.returncode not in (None, 0)]
        if failures and failed_at is None:
            failed_at, code = time.monotonic(), failures[0]
        if failed_at is not None and time.monotonic() - failed_at > grace:
            print(f"launch/local.py: killing processes still running {grace:.0f} s after a failure")
            for child in children:
                if child.poll() is None:
                    child.kill()
    for relay in relays:
        relay.join(timeout=5)
    for index, child in enumerate(children):
        if child.returncode:
            print(f"launch/local.py: process {index} exited with code {child.returncode}")
    return code or next((c.returncode for c in children if c.returncode), 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=4)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument("--grace", type=float, default=180.0)
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("clipjax_args", nargs=argparse.REMAINDER, help="-- then clipjax's args")
    args = parser.parse_args(argv)
    clipjax_args = args.clipjax_args[1:] if args.clipjax_args[:1] == ["--"] else args.clipjax_args
    if args.processes < 1 or args.devices_per_process < 1:
        parser.error("--processes and --devices-per-process must be at least 1")
    if not clipjax_args:
        parser.error("give clipjax's arguments after --, e.g. -- train --workdir /tmp/run")
    port = args.port or free_port()
    commands = process_commands(args.processes, args.devices_per_process, port, clipjax_args)
    if args.dry_run:
        keys = ("JAX_PLATFORMS", "XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES")
        for argv_, env in commands:
            assigned = " ".join(f"{k}={shlex.quote(env[k])}" for k in (*keys, "JAX_PROCESS_ID"))
            print(f"{assigned} {shlex.join(argv_)}")
        return 0
    return run(commands, args.grace)


if __name__ == "__main__":
    sys.exit(main())

"""Transparent huge pages for host memory, which XLA's CPU runtime needs to run fast.

XLA's CPU client allocates each step's large buffers afresh through malloc, which
serves them with new mmaps: every 4 KiB page is faulted in and zeroed on first
touch. For the ViT-S/16 bench step that is 1.8 million page faults and 3.8 s of
kernel time per 15 s step on 2 cores. glibc's `glibc.malloc.hugetlb=1` tunable
(glibc >= 2.35) makes malloc ask for transparent huge pages, cutting the faults
to about 4,000 per step (BENCHMARKS.md). Tunables are read when a process
starts, so the `clipjax` command re-executes itself once with the tunable set.
Set CLIPJAX_HUGEPAGES=0 to opt out.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, OSError, ValueError):
        return None
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None


def _huge_pages_available() -> bool:
    try:
        mode = Path(THP_MODE).read_text()
    except OSError:
        return False
    return "[never]" not in mode


def hugepage_env(env: Mapping[str, str]) -> dict[str, str] | None:
    """`env` with the tunable added, or None where it is set, unsupported or opted out."""
    if env.get("CLIPJAX_HUGEPAGES", "1") == "0" or TUNABLE in env.get("GLIBC_TUNABLES", ""):
        return None
    glibc = _glibc_version()
    if glibc is None or glibc < (2, 35) or not _huge_pages_available():
        return None
    tunables = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), TUNABLE) if t)
    return {**env, "GLIBC_TUNABLES": tunables}


def reexec_with_hugepages(python_args: Sequence[str]) -> None:
    """Replaces this process (same PID) by `python *python_args` with the tunable
    set; returns without doing anything where `hugepage_env` says no."""
    env = hugepage_env(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *python_args], env)

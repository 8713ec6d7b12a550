"""Huge-page malloc: the environment it sets and the page faults it saves."""

import json
import os
import subprocess
import sys

import pytest

from clipjax.host_memory import TUNABLE, hugepage_env

# plain malloc, as XLA's CPU client allocates (numpy would madvise huge pages itself)
TOUCH_512_MIB = """
import ctypes, json, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    block = libc.malloc(512 << 20)  # above the mmap threshold: a fresh mapping each time
    ctypes.memset(block, 1, 512 << 20)
    libc.free(block)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def test_env_adds_the_tunable_once_and_keeps_others():
    env = hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "PATH": "/bin"})
    if env is None:
        pytest.skip("this host has no transparent huge pages or glibc < 2.35")
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"
    assert env["PATH"] == "/bin"
    assert hugepage_env(env) is None  # already set: no second re-exec
    assert hugepage_env({"CLIPJAX_HUGEPAGES": "0"}) is None


def faults(env) -> int:
    out = subprocess.run(
        [sys.executable, "-c", TOUCH_512_MIB], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_huge_pages_cut_page_faults_of_fresh_buffers():
    base = {"PATH": "/usr/bin:/bin"}
    env = hugepage_env(base)
    if env is None:
        pytest.skip("this host has no transparent huge pages or glibc < 2.35")
    plain, huge = faults(base), faults(env)
    assert plain > 4 * 131072 * 0.9  # every 4 KiB page of 4 x 512 MiB faults
    assert huge * 20 < plain, (plain, huge)


def test_reexec_runs_the_command_again_with_the_tunable():
    if hugepage_env({"PATH": "/bin"}) is None:
        pytest.skip("this host has no transparent huge pages or glibc < 2.35")
    script = (
        "from clipjax.host_memory import reexec_with_hugepages\n"
        "reexec_with_hugepages(['-c', 'import os; print(os.environ[\"GLIBC_TUNABLES\"])'])\n"
        "print('not replaced')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "CLIPJAX_HUGEPAGES")}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == TUNABLE

"""libtpu on a machine without TPUs: the environment that keeps it quiet.

Installed for `clipjax compile` (the `tpu-aot` extra), libtpu is loaded by every JAX
process and, finding no TPU VM around it, prints warnings about unset worker
variables. These defaults describe a single, local worker; nothing is overridden
that the user or a real TPU VM has set.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import MutableMapping

GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips show up as PCI devices of Google's vendor id


def has_tpu_chips() -> bool:
    """Whether this machine has TPU chips attached (as JAX's own probe looks for them)."""
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                if f.read().strip() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def quiet_libtpu(environ: MutableMapping[str, str] = os.environ, accelerator: str = "") -> None:
    """Sets libtpu's single-local-worker defaults where libtpu is installed and no TPU
    is attached; call before JAX loads its backends."""
    if importlib.util.find_spec("libtpu") is None or has_tpu_chips():
        return
    environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server to ask
    environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator or "v5litepod-1")
    environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    environ.setdefault("TPU_WORKER_ID", "0")
    # no chip to guard: several compiles (or a compile beside a test run) may load libtpu
    environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

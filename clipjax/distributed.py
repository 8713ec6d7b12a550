"""Is this one of several processes, and which? Then `jax.distributed.initialize`.

The process group comes from, in order: the explicit `--coordinator_address /
--num_processes / --process_id` flags; the `JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID` variables (the local launcher and the
Kubernetes manifest set these); the variables `srun` sets for a job step; the
variables GKE sets on TPU pods (`TPU_WORKER_HOSTNAMES`, `TPU_WORKER_ID`).
`--distributed=jax` hands detection to JAX itself (Cloud TPU VM metadata, Open
MPI); `--distributed=off` never initialises. A group of one process is not
initialised.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

MODES = ("auto", "off", "jax")
TPU_COORDINATOR_PORT = 8476  # the port libtpu's own coordinator convention uses


class LaunchError(ValueError):
    """The flags or the environment describe an inconsistent process group."""


@dataclass(frozen=True)
class ProcessGroup:
    source: str  # "flags", "env", "slurm", "gke-tpu" or "jax"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None  # None: every local device

    def describe(self) -> str:
        if self.source == "jax":
            return "process group detected by jax.distributed"
        return (
            f"process {self.process_id} of {self.num_processes} "
            f"(coordinator {self.coordinator_address}, from {self.source})"
        )


@dataclass(frozen=True)
class Timeouts:
    init: int = 300  # seconds to wait for every process to join
    heartbeat: int = 60  # a process silent this long is dead and the run stops
    shutdown: int = 60  # seconds to wait for the others at exit

    @classmethod
    def from_config(cls, group) -> Timeouts:
        """From the config's `distributed` group."""
        return cls(group.init_timeout, group.heartbeat_timeout, group.shutdown_timeout)

    def __post_init__(self):
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LaunchError(f"distributed.{name}_timeout={value!r} must be a positive int")


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer") from None


def _checked(source: str, address: str, count: int, index: int) -> ProcessGroup | None:
    if count < 1:
        raise LaunchError(f"{source}: the number of processes must be >= 1, got {count}")
    if not 0 <= index < count:
        raise LaunchError(f"{source}: process id {index} is outside 0..{count - 1}")
    if count == 1:
        return None
    if not re.fullmatch(r"\[?[\w.\-:]+\]?:\d+", address or ""):
        raise LaunchError(f"{source}: coordinator address {address!r} is not HOST:PORT")
    return ProcessGroup(source, address, count, index)


def _from_triple(source: str, names: tuple[str, str, str], values: tuple) -> ProcessGroup | None:
    given = [v is not None and v != "" for v in values]
    if not any(given) or _single(values[1]):
        return None
    if not all(given):
        missing = [n for n, g in zip(names, given, strict=True) if not g]
        raise LaunchError(f"{source}: {', '.join(names)} go together; missing {missing}")
    address, count, index = values
    return _checked(source, address, _int(str(count), names[1]), _int(str(index), names[2]))


def _single(count) -> bool:
    return count is not None and str(count).strip() == "1"


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: `gpu[003-010,12],cpu1` -> `gpu003`."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match or not match.group(1):
        raise LaunchError(f"cannot read a host from the Slurm node list {nodelist!r}")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + re.split(r"[,\-]", ranges)[0]


def _slurm(environ: Mapping[str, str]) -> ProcessGroup | None:
    if "SLURM_JOB_ID" not in environ:
        return None
    if "SLURM_STEP_NUM_TASKS" not in environ:
        tasks = environ.get("SLURM_NTASKS", "1")
        if tasks != "1":
            log.warning(
                "inside a Slurm allocation of %s tasks but not started by srun: "
                "running as one process (launch with srun, see launch/slurm.sbatch)",
                tasks,
            )
        return None
    count = _int(environ["SLURM_STEP_NUM_TASKS"], "SLURM_STEP_NUM_TASKS")
    port = environ.get("JAX_COORDINATOR_PORT") or str(
        61440 + _int(environ["SLURM_JOB_ID"], "SLURM_JOB_ID") % 4096
    )
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST", "")
    address = f"{first_host(nodes)}:{port}" if count > 1 else ""
    index = _int(environ.get("SLURM_PROCID", ""), "SLURM_PROCID")
    group = _checked("slurm", address, count, index)
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE", "1").split("(")[0].split(",")[0]
    if group is not None and _int(per_node, "SLURM_STEP_TASKS_PER_NODE") > 1:
        # several tasks share a node: each takes the accelerator of its local rank
        local = _int(environ.get("SLURM_LOCALID", ""), "SLURM_LOCALID")
        group = dataclasses.replace(group, local_device_ids=(local,))
    return group


def _gke_tpu(environ: Mapping[str, str]) -> ProcessGroup | None:
    hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(hosts) < 2:
        return None
    index = _int(environ.get("TPU_WORKER_ID", ""), "TPU_WORKER_ID")
    return _checked("gke-tpu", f"{hosts[0]}:{TPU_COORDINATOR_PORT}", len(hosts), index)


def detect(
    environ: Mapping[str, str],
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> ProcessGroup | None:
    """The process group the flags and `environ` describe; None for a single process."""
    if mode not in MODES:
        raise LaunchError(f"--distributed={mode!r}; expected one of {MODES}")
    flags = (coordinator_address, num_processes, process_id)
    names = ("--coordinator_address", "--num_processes", "--process_id")
    if mode == "off":
        if any(v is not None for v in flags):
            raise LaunchError(f"--distributed=off contradicts {names} given on the command line")
        return None
    if mode == "jax":  # JAX detects what the flags leave unset
        return ProcessGroup("jax", *flags)
    group = _from_triple("flags", names, flags)
    if group is not None or any(v is not None for v in flags):
        return group
    env_names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    if any(environ.get(n) for n in env_names[1:]):
        return _from_triple("env", env_names, tuple(environ.get(n) for n in env_names))
    for source in (_slurm, _gke_tpu):
        group = source(environ)
        if group is not None:
            return group
    return None


def initialize(group: ProcessGroup, timeouts: Timeouts = Timeouts()) -> None:
    """Starts `jax.distributed` for `group`; must run before JAX touches a device."""
    import jax

    # CPU processes exchange collectives through gloo; accelerators are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    fields = ("coordinator_address", "num_processes", "process_id", "local_device_ids")
    explicit = {k: getattr(group, k) for k in fields}
    if group.source == "jax":  # JAX detects what is unset
        explicit = {k: v for k, v in explicit.items() if v is not None}
    else:
        # JAX would otherwise narrow every Slurm task to one GPU, even one task per node.
        explicit["cluster_detection_method"] = "deactivate"
    log.info("initialising jax.distributed: %s", group.describe())
    jax.distributed.initialize(
        **explicit,
        initialization_timeout=timeouts.init,
        heartbeat_timeout_seconds=timeouts.heartbeat,
        shutdown_timeout_seconds=timeouts.shutdown,
    )

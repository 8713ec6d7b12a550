"""NVIDIA GPUs for `clipjax compile`, without a GPU: `h100x8`, `h200x16`, `a100x8`.

XLA's GPU compiler (the `jax-cuda12-plugin` and `-pjrt` wheels, the `gpu-aot` extra)
compiles for a device it is given as a target description instead of one it finds:
the device's properties below, written as XLA's `GpuTargetConfigProto` text. N GPUs
are hosts of 8 (the HGX boards these parts ship on).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from clipjax.aot.topology import CompilerMissing

GPUS_PER_HOST = 8
# Without a GPU to autotune on, XLA's GPU compiler fails to tile some matmuls for Triton
# ("Couldn't find output tile sizes"); cuBLAS's GEMMs and no autotuning compile them.
DEVICELESS_XLA_FLAGS = ("--xla_gpu_enable_triton_gemm=false", "--xla_gpu_autotune_level=0")
INSTALL_HINT = (
    "XLA's GPU compiler is not installed; install the extra that brings it at the version "
    "matching jaxlib: `uv sync --extra gpu-aot` (or `pip install 'jax[cuda12-local]==<your jax>'`)"
)


@dataclass(frozen=True)
class GpuSpec:
    """One SXM part as CUDA reports it (cudaGetDeviceProperties / cuDeviceGetAttribute)."""

    name: str  # the device name CUDA reports
    compute_capability: tuple[int, int]
    sms: int
    memory_bytes: int  # total global memory as CUDA reports it
    memory_bandwidth: float  # bytes/s
    l2_bytes: int
    clock_ghz: float  # boost
    shared_per_sm: int
    shared_per_block_optin: int
    source: str


GPUS = {
    "h100": GpuSpec("NVIDIA H100 80GB HBM3", (9, 0), 132, 84_929_347_584, 3.35e12,
                    50 * 2**20, 1.98, 228 * 1024, 227 * 1024, "NVIDIA H100 SXM5 data sheet"),
    "h200": GpuSpec("NVIDIA H200", (9, 0), 132, 150_754_820_096, 4.8e12,
                    50 * 2**20, 1.98, 228 * 1024, 227 * 1024, "NVIDIA H200 SXM data sheet"),
    "a100": GpuSpec("NVIDIA A100-SXM4-80GB", (8, 0), 108, 85_089_239_040, 2.039e12,
                    40 * 2**20, 1.41, 164 * 1024, 163 * 1024, "NVIDIA A100 SXM4 data sheet"),
}  # fmt: skip


def target_config(spec: GpuSpec) -> str:
    """`spec` as XLA's GpuTargetConfigProto in text format."""
    major, minor = spec.compute_capability
    info = {
        "threads_per_block_limit": 1024,
        "threads_per_warp": 32,
        "shared_memory_per_block": 48 * 1024,
        "shared_memory_per_core": spec.shared_per_sm,
        "threads_per_core_limit": 2048,
        "core_count": spec.sms,
        "fpus_per_core": 128 if major >= 9 else 64,
        "block_dim_limit_x": 2**31 - 1,
        "block_dim_limit_y": 65535,
        "block_dim_limit_z": 65535,
        "memory_bandwidth": int(spec.memory_bandwidth),
        "l2_cache_size": spec.l2_bytes,
        "clock_rate_ghz": spec.clock_ghz,
        "device_memory_size": spec.memory_bytes,
        "shared_memory_per_block_optin": spec.shared_per_block_optin,
        "registers_per_core_limit": 65536,
        "registers_per_block_limit": 65536,
    }
    fields = "\n".join(f"  {key}: {value}" for key, value in info.items())
    return (
        f"gpu_device_info {{\n{fields}\n"
        f"  cuda_compute_capability {{ major: {major} minor: {minor} }}\n}}\n"
        'platform_name: "CUDA"\n'
        "dnn_version_info { major: 9 minor: 7 }\n"
        "runtime_version { major: 12 minor: 8 }\n"
        f'device_description_str: "{spec.name}"\n'
    )


@dataclass(frozen=True)
class GpuTopology:
    """N GPUs of one kind, in hosts of 8 (times `slices`, a multiple of the hosts)."""

    kind: str
    count: int
    slices: int = 1

    platform = "cuda"
    compiler = "XLA's GPU compiler"

    @property
    def spec(self) -> GpuSpec:
        return GPUS[self.kind]

    @property
    def chips(self) -> int:
        return self.count * self.slices

    @property
    def hosts(self) -> int:
        return math.ceil(self.count / GPUS_PER_HOST) * self.slices

    @property
    def hbm_bytes(self) -> int:
        return self.spec.memory_bytes

    @property
    def hbm_source(self) -> str:
        return self.spec.source

    def describe(self) -> str:
        return f"{self.kind}x{self.chips}: {self.chips} {self.spec.name} GPUs, {self.hosts} hosts"

    def devices(self) -> list:
        """The GPUs as XLA's GPU compiler describes them from the target description."""
        try:
            import jax_plugins.xla_cuda12  # noqa: F401
        except ImportError as exc:
            raise CompilerMissing(INSTALL_HINT) from exc
        from jax.experimental import topologies

        per_host = min(self.count, GPUS_PER_HOST)
        description = topologies.get_topology_desc(
            platform="cuda",
            topology=f"{self.slices}x{self.hosts // self.slices}x{per_host}",
            target_config=target_config(self.spec),
        )
        return list(description.devices)


def use_deviceless_flags(environ) -> None:
    """Adds `DEVICELESS_XLA_FLAGS` to XLA_FLAGS; call before JAX starts its backends."""
    flags = environ.get("XLA_FLAGS", "").split()
    environ["XLA_FLAGS"] = " ".join(flags + [f for f in DEVICELESS_XLA_FLAGS if f not in flags])


def parse_gpus(text: str, slices: int = 1) -> GpuTopology:
    """`h100x8`, `h200x16`, `a100x64`: a kind and a count (a multiple of 8 above 8)."""
    found = re.fullmatch(r"([a-z]\d+)x(\d+)", text.strip().lower())
    count = int(found.group(2)) if found else 0
    if (
        not found
        or found.group(1) not in GPUS
        or count < 1
        or (count > GPUS_PER_HOST and count % GPUS_PER_HOST)
    ):
        raise ValueError(
            f"--topology={text!r} is not a GPU set; expected KINDxN with KIND one of "
            f"{sorted(GPUS)} and N 1-8 or a multiple of 8 (h100x8, h200x64)"
        )
    return GpuTopology(found.group(1), count, slices)

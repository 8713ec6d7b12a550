"""TPU topologies by the names users know, and the chips they are made of.

`v5p-512` (a Cloud TPU accelerator type) and `v5p:4x8x8` (the compiler's own
topology shape) name the same slice. v4 and v5p types count TensorCores, two per
chip; v5e and v6e types count chips. Shapes grow from one host's chips by
doubling the last of the smallest dimensions, which gives the shapes Cloud TPU
provisions for power-of-two slices (4x4x8 for 128 v5p chips, 16x16 for 256 v5e);
other shapes (v4:4x4x12) are given raw.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from clipjax.aot.libtpu_env import quiet_libtpu

INSTALL_HINT = (
    "the TPU compiler (libtpu) is not installed; install the extra that brings the version "
    "matching jaxlib: `uv sync --extra tpu-aot` (or `pip install 'jax[tpu]==<your jax>'`)"
)


class CompilerMissing(RuntimeError):
    """The compiler for the requested platform is not installed."""


@dataclass(frozen=True)
class Chip:
    """One TPU generation and its HBM per chip (its peak FLOP/s: `flops.device_peak`)."""

    generation: str
    hbm_bytes: int
    dims: int  # 3 for the 3-D torus generations, 2 for the 2-D ones
    cores_per_chip: int  # in the accelerator type's count
    compiler_name: str  # the prefix of the compiler's topology name
    source: str

    @property
    def chip_config(self) -> str:
        """Two TensorCores as one device per chip ("megacore"), as JAX runs v4 and v5p."""
        return "megacore" if self.cores_per_chip == 2 else "default"


GiB = 2**30
# HBM per chip from Cloud TPU's system-architecture pages ("HBM capacity", GB there).
CHIPS = {
    "v4": Chip("v4", 32 * GiB, 3, 2, "v4", "cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("v5e", 16 * GiB, 2, 1, "v5e", "cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 95 * GiB, 3, 2, "v5p", "cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", 32 * GiB, 2, 1, "v6e", "cloud.google.com/tpu/docs/v6e"),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "v6": "v6e"}
HOST_SHAPE = (2, 2, 1)  # chips per host on every multi-host slice of these generations
_MAX_CHIPS = {"v4": 4096, "v5e": 256, "v5p": 8960, "v6e": 256}


@dataclass(frozen=True)
class Topology:
    """A TPU slice (times `slices`): what the compiler needs to describe its devices."""

    chip: Chip
    shape: tuple[int, ...]
    slices: int = 1

    @property
    def name(self) -> str:
        return f"{self.chip.compiler_name}:{'x'.join(map(str, self.shape))}"

    @property
    def chips(self) -> int:
        return math.prod(self.shape) * self.slices

    @property
    def host_bounds(self) -> tuple[int, int, int]:
        padded = (*self.shape, 1, 1)[:3]
        return tuple(min(h, s) for h, s in zip(HOST_SHAPE, padded, strict=True))

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self.host_bounds)

    platform = "tpu"
    compiler = "the TPU compiler (libtpu)"

    @property
    def hbm_bytes(self) -> int:
        return self.chip.hbm_bytes

    @property
    def hbm_source(self) -> str:
        return self.chip.source

    def describe(self) -> str:
        slices = f" x {self.slices} slices" if self.slices > 1 else ""
        return f"{self.name}{slices}: {self.chips} {self.chip.generation} chips, {self.hosts} hosts"

    def devices(self) -> list:
        """The slice's devices as the TPU compiler describes them (no TPU needed)."""
        quiet_libtpu(accelerator=f"{self.chip.generation}-{self.chips}")
        try:
            import libtpu  # noqa: F401
        except ImportError as exc:
            raise CompilerMissing(INSTALL_HINT) from exc
        from jax.experimental import topologies

        description = topologies.get_topology_desc(
            platform="tpu",
            topology_name=self.name,
            chip_config_name=self.chip.chip_config,
            chips_per_host_bounds=self.host_bounds,
            num_slices=self.slices,
        )
        return list(description.devices)


def _grown_shape(chips: int, dims: int) -> tuple[int, ...] | None:
    shape = list(HOST_SHAPE) if dims == 3 else [1] * dims  # 3-D slices start at one host
    while math.prod(shape) < chips:
        smallest = min(shape)
        last = max(i for i, size in enumerate(shape) if size == smallest)
        shape[last] *= 2
    return tuple(shape) if math.prod(shape) == chips else None


def _generation(text: str) -> Chip | None:
    return CHIPS.get(ALIASES.get(text, text))


def known_names() -> list[str]:
    """Accelerator types accepted by name (raw shapes like v5p:4x4x12 are accepted too)."""
    names = []
    for gen, chip in CHIPS.items():
        chips = 1 if chip.dims == 2 else 4
        while chips <= _MAX_CHIPS[gen]:
            if chips != 2:  # no slice of 2 chips is provisioned
                names.append(f"{gen}-{chips * chip.cores_per_chip}")
            chips *= 2
    return names


def parse_topology(text: str, slices: int = 1):
    """`v5p-512`, `v5litepod-256`, `v5e-16`, `v6e-256`, `v4-128` or a raw `v5p:4x4x4`; or
    GPUs, `h100x8` (see `gpu_topology`)."""
    if slices < 1:
        raise ValueError(f"--slices={slices} must be at least 1")
    from clipjax.aot.gpu_topology import GPUS, parse_gpus

    if text.strip().lower().startswith(tuple(GPUS)):
        return parse_gpus(text, slices)
    raw = re.fullmatch(r"(v\w+?):(\d+(?:x\d+)+)", text.strip())
    if raw:
        chip = _generation(raw.group(1))
        shape = tuple(int(s) for s in raw.group(2).split("x"))
        if chip is None or len(shape) != chip.dims or min(shape) < 1:
            raise ValueError(_unknown(text))
        return Topology(chip, shape, slices)
    typed = re.fullmatch(r"(v\w+?)-(\d+)", text.strip())
    chip = _generation(typed.group(1)) if typed else None
    if chip is None or int(typed.group(2)) % chip.cores_per_chip:
        raise ValueError(_unknown(text))
    chips = int(typed.group(2)) // chip.cores_per_chip
    shape = _grown_shape(chips, chip.dims) if chips <= _MAX_CHIPS[chip.generation] else None
    if shape is None or (chip.dims == 3 and chips < 4) or chips == 2:
        raise ValueError(_unknown(text))
    return Topology(chip, shape, slices)


def _unknown(text: str) -> str:
    return (
        f"--topology={text!r} is not a TPU slice; expected an accelerator type "
        f"({', '.join(known_names())}) or a compiler shape such as v5p:4x4x12 or v5e:4x8 "
        f"(generations {', '.join(CHIPS)}); or GPUs such as h100x8"
    )

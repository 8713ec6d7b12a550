"""Compile the train step for a TPU slice (or GPUs) on a machine without them.

The step is `clipjax train`'s own (`train.program`), built over the topology's
devices with abstract state and batch: nothing is allocated and no data is read.
The TPU compiler (libtpu) then gives per-chip memory and FLOPs, or says the step
does not fit.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field

import jax

from clipjax.aot.gpu_topology import GpuTopology
from clipjax.aot.topology import Topology
from clipjax.flops import counts_model, device_peak, train_flops_per_example
from clipjax.parallel import build_mesh
from clipjax.train.program import build_step_program
from clipjax.validation import validate

MEMORY_FIELDS = (
    "model.remat ('full' recomputes each block in the backward pass)",
    "mesh.fsdp (shards parameters and optimizer state over more chips)",
    "loss.strategy='ring' (no B x B scores: O(b x ring_chunk) per chip)",
    "train.accum_steps (activations of one micro-batch at a time)",
    "train.batch_size",
)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


@dataclass
class CompileReport:
    """What the TPU compiler says of one config on one topology; sizes are per chip."""

    topology: str
    compiler: str
    chips: int
    hosts: int
    mesh: dict[str, int]
    global_batch: int
    hbm_bytes: int
    hbm_source: str
    fits: bool
    compile_seconds: float
    memory: dict[str, int] = field(default_factory=dict)  # per-chip terms, see `memory_terms`
    total_bytes: int = 0
    requested_bytes: int | None = None  # what an out-of-memory compile asked for
    compiler_message: str = ""
    compiled_flops: float | None = None
    model_flops: float | None = None
    peak_flops: float | None = None
    peak_source: str = ""
    notes: list[str] = field(default_factory=list)
    loops_undercounted: bool = False  # XLA counted scanned/accumulation loop bodies once

    @property
    def headroom_bytes(self) -> int:
        return self.hbm_bytes - (self.requested_bytes or self.total_bytes)

    def roofline_seconds(self) -> float | None:
        """The step at the chip's peak: the larger of XLA's and the architecture's count."""
        counts = [c for c in (self.compiled_flops, self.model_flops) if c]
        return max(counts) / self.peak_flops if counts and self.peak_flops else None

    def mfu_ceiling(self) -> float | None:
        """Useful work over the work the compiled step does (remat makes it < 1)."""
        if not (self.model_flops and self.compiled_flops) or self.loops_undercounted:
            return None
        return min(1.0, self.model_flops / self.compiled_flops)

    def as_json(self) -> dict:
        out = asdict(self)
        out.update(
            headroom_bytes=self.headroom_bytes,
            roofline_step_seconds=self.roofline_seconds(),
            mfu_ceiling=self.mfu_ceiling(),
        )
        return out


def compile_for_topology(config, topology: Topology | GpuTopology) -> CompileReport:
    """Validates `config` for the slice (or GPUs), compiles its train step with the
    platform's compiler and reports per-chip memory, FLOPs and whether it fits."""
    devices = topology.devices()
    validate(config, len(devices), topology.hosts, reads_data=False)
    mesh = build_mesh(config.mesh, devices, whole_slice=True)
    program = build_step_program(config, mesh)
    report = CompileReport(
        topology=topology.describe(),
        compiler=topology.compiler,
        chips=len(devices),
        hosts=topology.hosts,
        mesh=dict(mesh.shape),
        global_batch=config.train.batch_size,
        hbm_bytes=topology.hbm_bytes,
        hbm_source=topology.hbm_source,
        fits=False,
        compile_seconds=0.0,
    )
    started = time.perf_counter()
    try:
        compiled = program.lower(platforms=(topology.platform,)).compile()
    except jax.errors.JaxRuntimeError as exc:
        report.compile_seconds = time.perf_counter() - started
        if "RESOURCE_EXHAUSTED" not in str(exc):
            raise
        report.compiler_message = _first_line(str(exc))
        report.requested_bytes = requested_bytes(str(exc))
        return report
    report.compile_seconds = time.perf_counter() - started
    report.memory = memory_terms(program, compiled.memory_analysis())
    report.total_bytes = report.memory["total"]
    report.fits = report.total_bytes <= report.hbm_bytes
    _add_flops(report, config, compiled, devices[0])
    return report


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def memory_terms(program, stats) -> dict[str, int]:
    """Per-chip bytes in HBM: the train state (parameters and optimizer), the batch
    (without its images with `train.host_batch`), argument padding, XLA's temporaries, outputs not
    written over a donated input, code, and their total; then what stays in host memory."""
    state = shard_bytes(program.plan.abstract)
    on_chip = {k: v for k, v in program.abstract_batch().items() if k not in program.host_entries}
    batch = shard_bytes(on_chip)
    terms = {
        "state": state,
        "batch": batch,
        "other_arguments": max(0, stats.argument_size_in_bytes - state - batch),
        "temporaries": stats.temp_size_in_bytes,
        "outputs": stats.output_size_in_bytes - stats.alias_size_in_bytes,
        "code": stats.generated_code_size_in_bytes,
    }
    terms["total"] = sum(terms.values())
    terms["host_arguments"] = getattr(stats, "host_argument_size_in_bytes", 0) or 0
    terms["host_temporaries"] = getattr(stats, "host_temp_size_in_bytes", 0) or 0
    return terms


_SIZE = r"([\d.]+)([KMGTP]?)i?B?"
_OUT_OF_MEMORY = (  # the TPU compiler's two phrasings: (asked for, available)
    re.compile(rf"Used {_SIZE} of {_SIZE} hbm"),
    re.compile(rf"required for [^(]*\({_SIZE}\) exceeds available HBM \({_SIZE}\)"),
)


def requested_bytes(message: str) -> int | None:
    """The HBM an out-of-memory compile asked for ("Used 1.30T of 95.74G hbm", or "the
    total memory required for HLO temporaries (1.05T) exceeds available HBM (15.75G)")."""
    for pattern in _OUT_OF_MEMORY:
        found = pattern.search(message)
        if found:
            return int(float(found.group(1)) * _UNITS[found.group(2)])
    return None


def _first_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if "memory" in line.lower() or "RESOURCE" in line]
    return (useful or lines or [""])[0][:400]


def _add_flops(report: CompileReport, config, compiled, device) -> None:
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list | tuple) else cost) or {}  # None on GPU
    report.compiled_flops = float(cost.get("flops", 0.0)) or None
    if report.compiled_flops is None:
        report.notes.append("this compiler gives no cost analysis: FLOPs are the architecture's")
    peak = device_peak(device, "bfloat16")
    report.peak_flops, report.peak_source = peak.flops_per_s, peak.source
    model = config.model
    if counts_model(model):
        batch = config.train.batch_size
        report.model_flops = train_flops_per_example(model, batch) * batch / report.chips
    else:
        report.notes.append("the architecture's FLOPs are counted for CLIP ViT towers only")
    loops = []
    if model.get("scan_layers"):
        loops.append("scanned blocks (model.scan_layers)")
    if config.train.accum_steps > 1:
        loops.append(f"the {config.train.accum_steps} accumulation steps")
    if loops and report.compiled_flops:
        report.loops_undercounted = True
        report.notes.append(
            "XLA counts a loop's body once, not per trip: its FLOPs undercount "
            + " and ".join(loops)
        )

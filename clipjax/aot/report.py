"""The `clipjax compile` report as text."""

from __future__ import annotations

from clipjax.aot.compile import MEMORY_FIELDS, CompileReport

TERM_NAMES = {
    "state": "parameters + optimizer state",
    "batch": "batch",
    "other_arguments": "argument layout padding",
    "temporaries": "temporaries",
    "outputs": "outputs (not donated)",
    "code": "code",
}


def gib(n: float) -> str:
    """Bytes in GiB, or MiB below one GiB."""
    if abs(n) < 2**30:
        return f"{n / 2**20:,.1f} MiB"
    return f"{n / 2**30:,.2f} GiB"


def format_report(r: CompileReport) -> str:
    mesh = " x ".join(f"{axis}={size}" for axis, size in r.mesh.items())
    lines = [
        f"topology     {r.topology}",
        f"mesh         {mesh}; global batch {r.global_batch:,} "
        f"({r.global_batch / r.chips:,.0f} per chip)",
        f"compile      {r.compile_seconds:.1f} s ({r.compiler}, on this machine)",
        f"HBM per chip {gib(r.hbm_bytes)} ({r.hbm_source})",
    ]
    if r.requested_bytes is not None or not r.memory:
        return "\n".join(lines + _does_not_fit(r))
    lines.append("per-chip memory:")
    for key, name in TERM_NAMES.items():
        lines.append(f"  {name:<31} {gib(r.memory[key]):>14}")
    lines.append(f"  {'total':<31} {gib(r.total_bytes):>14}")
    host = r.memory.get("host_arguments", 0) + r.memory.get("host_temporaries", 0)
    if host:
        per_host = gib(host * r.chips / r.hosts)
        lines.append(f"  {'in host memory (not HBM)':<31} {gib(host):>14}  ({per_host} per host)")
    if r.fits:
        lines.append(f"fits         yes: {gib(r.headroom_bytes)} headroom "
                     f"({r.headroom_bytes / r.hbm_bytes:.0%} of HBM)")  # fmt: skip
    else:
        lines += _does_not_fit(r)
    lines += _flops_lines(r)
    return "\n".join(lines)


def _does_not_fit(r: CompileReport) -> list[str]:
    if r.requested_bytes is None and not r.total_bytes:
        lines = ["fits         NO: the TPU compiler ran out of HBM"]
    else:
        asked = r.requested_bytes or r.total_bytes
        lines = [f"fits         NO: the step needs {gib(asked)} per chip, "
                 f"{gib(-r.headroom_bytes)} more than HBM"]  # fmt: skip
    if r.compiler_message:
        lines.append(f"compiler     {r.compiler_message}")
    lines.append("fields that reduce memory:")
    lines += [f"  --config.{field}" for field in MEMORY_FIELDS]
    return lines


def _flops_lines(r: CompileReport) -> list[str]:
    lines = []
    if r.compiled_flops:
        lines.append(f"FLOPs/chip   {r.compiled_flops:.3e} compiled (XLA cost analysis)")
    if r.model_flops:
        lines.append(f"             {r.model_flops:.3e} from the architecture (clipjax.flops)")
    roofline = r.roofline_seconds()
    if roofline:
        lines.append(
            f"roofline     {roofline * 1e3:,.2f} ms per step at {r.peak_flops / 1e12:,.0f} "
            f"TFLOP/s ({r.peak_source})"
        )
    ceiling = r.mfu_ceiling()
    if ceiling is not None:
        lines.append(f"MFU ceiling  {ceiling:.1%} (architecture FLOPs / compiled FLOPs)")
    lines += [f"note         {note}" for note in r.notes]
    return lines

"""`clipjax compile`: topology names, and the real TPU compiler (libtpu, no TPU) on every
family's tiny config with each loss strategy, so a TPU-only lowering error fails here.

Needs the `tpu-aot` extra; without it these tests skip, unless CLIPJAX_REQUIRE_TPU_COMPILER=1
(CI) makes them fail."""

import importlib.util
import json
import math
import os
import re

import pytest

from clipjax.aot.topology import parse_topology
from clipjax.cli import main
from clipjax.config import apply_overrides, load_config


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (jax_plugins) is missing
        return False


HAVE_LIBTPU = installed("libtpu")
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU and os.environ.get("CLIPJAX_REQUIRE_TPU_COMPILER") != "1",
    reason="libtpu is not installed (uv sync --extra tpu-aot)",
)
HAVE_CUDA_PLUGIN = installed("jax_plugins.xla_cuda12")
needs_gpu_compiler = pytest.mark.skipif(
    not HAVE_CUDA_PLUGIN and os.environ.get("CLIPJAX_REQUIRE_GPU_COMPILER") != "1",
    reason="XLA's GPU compiler is not installed (uv sync --extra gpu-aot)",
)


@pytest.mark.parametrize(
    ("name", "compiler_name", "chips", "hosts"),
    [
        ("v5p-512", "v5p:4x8x8", 256, 64),
        ("v5p-8", "v5p:2x2x1", 4, 1),
        ("v4-128", "v4:4x4x4", 64, 16),
        ("v5e-256", "v5e:16x16", 256, 64),
        ("v5litepod-16", "v5e:4x4", 16, 4),
        ("v6e-8", "v6e:2x4", 8, 2),
        ("v5e-1", "v5e:1x1", 1, 1),
        ("v5p:4x4x12", "v5p:4x4x12", 192, 48),
    ],
)
def test_accelerator_types_map_to_compiler_shapes(name, compiler_name, chips, hosts):
    topology = parse_topology(name)
    assert (topology.name, topology.chips, topology.hosts) == (compiler_name, chips, hosts)
    assert parse_topology(name, slices=2).chips == 2 * chips


@pytest.mark.parametrize("bad", ["v5p-12", "v5e-3", "v7-8", "tpu", "v5e:4x4x4", "v5p-2"])
def test_unknown_topology_is_refused_with_the_valid_names(bad):
    with pytest.raises(ValueError, match=r"not a TPU slice.*v5e-256.*v5p-512"):
        parse_topology(bad)


@pytest.mark.parametrize(
    ("name", "kind", "gpus", "hosts"),
    [("h100x8", "h100", 8, 1), ("h200x64", "h200", 64, 8), ("a100x4", "a100", 4, 1)],
)
def test_gpu_sets_by_name(name, kind, gpus, hosts):
    topology = parse_topology(name)
    assert (topology.kind, topology.chips, topology.hosts) == (kind, gpus, hosts)
    assert topology.platform == "cuda" and topology.hbm_bytes > 79 * 2**30


@pytest.mark.parametrize("bad", ["h100x12", "h100x0", "b200x8", "h100"])
def test_unknown_gpu_sets_are_refused(bad):
    with pytest.raises(ValueError, match="not a"):
        parse_topology(bad)


def test_requested_size_is_read_from_the_compilers_out_of_memory_message():
    from clipjax.aot.compile import requested_bytes

    message = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 1.30T of 95.74G hbm."
    assert requested_bytes(message) == int(1.30 * 2**40)
    other = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (1.05T) exceeds available HBM (15.75G)."
    )
    assert requested_bytes(other) == int(1.05 * 2**40)
    assert requested_bytes("some other failure") is None


TINY = {
    "clip": "configs/clip/tiny.py",
    "siglip": "configs/siglip/vit_b16.py:tiny",
    "align": "configs/align/efficientnet_b3.py:tiny",
    "lit": "configs/lit/vit_b16.py:tiny",
    "coca": "configs/coca/base.py:tiny",
}
# `ring` (ppermute and custom VJPs) for every family by default, all strategies for CLIP;
# the other families' gather/grouped compiles run with `-m slow` (CI runs those too)
FAMILY_CASES = [
    pytest.param(f, s, marks=[pytest.mark.slow] if f != "clip" and s != "ring" else [])
    for f in TINY
    for s in ("gather", "grouped", "ring")
] + [("symile", None)]


def tiny_config(family, strategy, tmp_path, batch=64):
    config = load_config(TINY.get(family, "configs/symile/xor.py:tiny"))
    overrides = [f"train.batch_size={batch}", "mesh.data=-1", "mesh.fsdp=1", "mesh.tensor=1"]
    if strategy:
        overrides += [f"loss.strategy={strategy!r}", "loss.group_size=2"]
    apply_overrides(config, overrides)
    with config.unlocked():
        config.evals = {}
        if family == "lit":
            config.init_from = str(tmp_path)
    return config


@needs_libtpu
@pytest.mark.parametrize(("family", "strategy"), FAMILY_CASES)
@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_every_family_compiles_for_a_tpu_slice(family, strategy, tmp_path):
    import jax

    from clipjax.aot.compile import compile_for_topology
    from clipjax.data.loader import batch_layout
    from clipjax.parallel import build_mesh
    from clipjax.train.program import build_step_program

    config = tiny_config(family, strategy, tmp_path)
    report = compile_for_topology(config, parse_topology("v5e-4"))
    assert report.fits and report.chips == 4 and report.mesh["data"] == 4
    assert report.compiled_flops > 0 and report.memory["code"] > 0
    terms = {k: v for k, v in report.memory.items() if k != "total" and not k.startswith("host")}
    assert report.total_bytes == sum(terms.values()) <= report.hbm_bytes
    # data-parallel: every chip holds the whole train state and a quarter of the batch
    abstract = build_step_program(config, build_mesh(config.mesh)).plan.abstract
    state = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    example = sum(math.prod(s) * d.itemsize for s, d in batch_layout(config).values())
    assert report.memory["state"] == state
    assert report.memory["batch"] == 64 // 4 * example


@needs_libtpu
@pytest.mark.parametrize("name", ["v4-8", "v5p-8", "v6e-4"])
def test_each_generation_gives_one_device_per_chip(name):
    devices = parse_topology(name).devices()
    assert len(devices) == 4 and len({tuple(d.coords) for d in devices}) == 4


@needs_libtpu
def test_two_slices_put_the_data_axis_across_them(tmp_path):
    from clipjax.aot.compile import compile_for_topology

    config = tiny_config("clip", "ring", tmp_path)
    report = compile_for_topology(config, parse_topology("v5e-4", slices=2))
    assert report.fits and report.chips == 8 and report.hosts == 2 and report.mesh["data"] == 8
    apply_overrides(config, ["mesh.data=1", "mesh.fsdp=-1"])
    with pytest.raises(ValueError, match="multiple of the 2 slices"):
        compile_for_topology(config, parse_topology("v5e-4", slices=2))


def compile_tiny_clip(capsys, topology: str, *flags: str) -> tuple[int, str]:
    """`clipjax compile` on the tiny CLIP config: (exit code, what it printed)."""
    code = main(["compile", "--config=configs/clip/tiny.py", f"--topology={topology}", *flags])
    return code, capsys.readouterr().out


@needs_libtpu
def test_compile_command_reports_a_fit_and_writes_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    code, printed = compile_tiny_clip(
        capsys, "v5e-4", f"--out={out}", "--config.train.batch_size=256"
    )
    assert code == 0, printed
    assert "fits         yes" in printed and "MFU ceiling" in printed
    report = json.loads(out.read_text())
    assert report["fits"] and report["chips"] == 4 and report["global_batch"] == 256
    assert report["model_flops"] > 0 and report["roofline_step_seconds"] > 0


@needs_libtpu
def test_a_batch_that_cannot_fit_exits_3_with_the_size_and_the_fields(capsys):
    # gather at 1M: each chip scores 262,144 rows against 1,048,576 columns (1 TiB);
    # XLA's attention, as the bounds below were measured with (the flash kernel pads
    # these 17- and 32-token sequences to 128 keys: 1,352 GiB with libtpu 0.0.42)
    code, printed = compile_tiny_clip(
        capsys,
        "v5e-4",
        "--config.train.batch_size=1048576",
        "--config.loss.strategy='gather'",
        "--config.model.attention='xla'",
    )
    assert code == 3, printed
    # at least the 262,144 x 1,048,576 float32 scores: 1,024 GiB (libtpu versions add
    # different temporaries on top: 1,075 GiB with 0.0.42, 1,085 GiB with 0.0.50)
    needs = re.search(r"fits         NO: the step needs ([\d,.]+) GiB per chip", printed)
    assert needs and 1024 <= float(needs[1].replace(",", "")) < 1200, printed
    assert "--config.loss.strategy='ring'" in printed and "--config.model.remat" in printed


def test_compile_refuses_a_bad_topology_with_exit_2(capsys):
    assert main(["compile", "--config=configs/clip/tiny.py", "--topology=v5p-7"]) == 2
    assert "not a TPU slice" in capsys.readouterr().err


@needs_libtpu
@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_a_host_batch_leaves_hbm_and_waits_in_host_memory(tmp_path):
    from clipjax.aot.compile import compile_for_topology

    reports = {}
    for host in (False, True):
        config = tiny_config("clip", "gather", tmp_path, batch=1024)
        apply_overrides(config, ["train.accum_steps=4", f"train.host_batch={host}"])
        reports[host] = compile_for_topology(config, parse_topology("v5e-4"))
    pixels, tokens = 1024 // 4 * 32 * 32 * 3, 1024 // 4 * 32 * 4  # per chip
    on_chip, in_host = reports[False].memory, reports[True].memory
    assert on_chip["batch"] == pixels + tokens and on_chip["host_arguments"] == 0
    # the pixels wait in host memory instead (its host layout may pad them)
    assert in_host["batch"] == tokens and in_host["host_arguments"] >= pixels


@needs_gpu_compiler
def test_compile_for_eight_h100s_without_a_gpu(capsys, monkeypatch):
    """XLA's GPU compiler from a target description: the tiny CLIP step for h100x8."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored afterwards
    code, printed = compile_tiny_clip(
        capsys, "h100x8", "--config.train.batch_size=256", "--config.loss.strategy='ring'"
    )
    assert code == 0, printed
    assert "8 NVIDIA H100 80GB HBM3 GPUs" in printed and "fits         yes" in printed
    assert "XLA's GPU compiler" in printed


@needs_libtpu
@pytest.mark.parametrize("attention", ["xla", "flash", "auto"])
@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_the_attention_choice_reaches_the_tpu_compiler(attention, tmp_path):
    """`flash` (and `auto` on TPU) put the Pallas kernel (a Mosaic custom call) in the
    step, forward and backward, and the step compiles; `xla` has no custom call."""
    from clipjax.aot.compile import compile_for_topology
    from clipjax.parallel import build_mesh
    from clipjax.train.program import build_step_program

    config = tiny_config("siglip", "ring", tmp_path)  # bidirectional text: key padding
    config.model.attention = attention
    topology = parse_topology("v5e-4")
    mesh = build_mesh(config.mesh, topology.devices(), whole_slice=True)
    lowered = build_step_program(config, mesh).lower(platforms=("tpu",)).as_text()
    kernels = lowered.count("tpu_custom_call")  # distinct kernel bodies: same-shape
    # layers share one; the forward, dq and dkv kernels of image, text and MAP layers
    assert kernels == (0 if attention == "xla" else 9), kernels
    assert compile_for_topology(config, topology).fits

"""Each published recipe compiled for its target topology by the real TPU compiler,
on this machine (no TPU): per-chip HBM, whether it fits, FLOPs and compile time.

    uv sync --extra tpu-aot
    uv run python bench/recipes_compile.py                      # every recipe
    uv run python bench/recipes_compile.py configs/clip/vit_b16.py --attention xla flash

Each row is `clipjax compile --config=FILE --topology=FILE's TOPOLOGY` (the recipe as
shipped: bf16, scanned remat blocks, FSDP, the ring loss, `model.attention=auto`, which
is the Pallas flash kernel on TPU). `--attention` compiles each recipe once per choice.
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RECIPES = (
    "configs/clip/vit_b32.py",
    "configs/clip/vit_b16.py",
    "configs/clip/vit_l14.py",
    "configs/siglip/vit_b16.py",
    "configs/align/efficientnet_b3.py",
    "configs/lit/vit_b16.py",
    "configs/coca/base.py",
)
GiB = 2**30


def target_topology(path: str) -> str:
    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TOPOLOGY


def compile_recipe(path: str, attention: str | None):
    from clipjax.aot.compile import compile_for_topology
    from clipjax.aot.topology import parse_topology
    from clipjax.config import load_config

    config = load_config(path)
    if attention:
        config.model.attention = attention
    if config.model.get("frozen"):
        config.init_from = "/runs/clip_b16/checkpoints"  # LiT's tower: need not exist
    return compile_for_topology(config, parse_topology(target_topology(path)))


def row(path: str, attention: str | None, report, topology: str) -> str:
    m = report.memory
    flops = report.model_flops
    total = (report.requested_bytes or report.total_bytes) / GiB
    return (
        f"| `{path.removeprefix('configs/')}` | {attention or 'auto'} | {topology} "
        f"({report.chips}) | "
        f"{report.global_batch:,} | {m.get('state', 0) / GiB:.2f} | "
        f"{m.get('temporaries', 0) / GiB:.2f} | "
        f"{total:.2f} / {report.hbm_bytes / GiB:.2f} | "
        f"{'yes' if report.fits else '**NO**'} | "
        f"{'-' if flops is None else f'{flops:.3g}'} | {report.compile_seconds:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=RECIPES)
    parser.add_argument("--attention", nargs="*", default=[None])
    args = parser.parse_args()
    print(
        "| recipe | attention | topology | global batch | state | temporaries | total / HBM "
        "(GiB per chip) | fits | model FLOPs per chip | compile (s) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---|---:|---:|")
    for path in args.recipes:
        for attention in args.attention:
            report = compile_recipe(path, attention)
            print(row(path, attention, report, target_topology(path)), flush=True)


if __name__ == "__main__":
    main()

"""Compile time of the full train step, scanned vs unrolled transformer blocks.

    uv run python bench/compile_time.py [--size vit_b16] [--batch 8] [--repeats 1]
        [--fsdp 1] [--remat none] [--phases] [--grad-only]

Builds OpenAI's CLIP size (image and text towers, 12 layers each for ViT-B/16),
AdamW, the softmax loss, and times `jit(step).lower(...)` and `.compile()` for
`model.scan_layers` False and True, alternating. `--fsdp N` compiles for an
fsdp mesh of N simulated CPU devices (the batch is per device); `--grad-only`
compiles the loss gradient alone, without the optimizer update. `--phases`
splits `.compile()` with XLA's own timers, read from its log: HLO passes, the
backend (kernel emission + LLVM), how many LLVM kernel modules it built, and
how many fusions reused an already-built kernel instead.
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}
TIME = r"time: ([0-9.]+) (us|ms|s|min)\b"


def parse_xla_log(text: str, module: str = "jit_step") -> dict:
    """XLA:CPU's phase timers for `module` from its VLOG output: seconds in HLO passes,
    seconds in the backend, and the number of LLVM kernel modules it compiled."""
    hlo = re.search(rf"Running HLO passes on \[{module}\] for CPU {TIME}", text)
    backend = re.search(rf"Compiling \[{module}\] for CPU using JIT {TIME}", text)
    start = text.find(f"Compiling: {module}")
    if not (hlo and backend) or start < 0:
        raise RuntimeError(
            f"XLA's log has no compile timers for {module!r}; is jaxlib's CPU backend in use?"
        )
    kernels = len(re.findall(r"Compiled LLVM module: ", text[start:]))
    reused = len(re.findall(r"Reusing kernel: ", text[start:]))
    return {
        "hlo": float(hlo.group(1)) * UNITS[hlo.group(2)],
        "backend": float(backend.group(1)) * UNITS[backend.group(2)],
        "kernels": kernels,
        "reused": reused,
    }


class CapturedStderr:
    """Redirects file descriptor 2 (where XLA's C++ logging goes) into a temp file."""

    def __enter__(self):
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="vit_b16", choices=["vit_b32", "vit_b16", "vit_l14"])
    parser.add_argument("--batch", type=int, default=8, help="images per device")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--fsdp", type=int, default=1, help="simulated CPU devices (fsdp axis)")
    parser.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    parser.add_argument("--phases", action="store_true", help="split compile by XLA's timers")
    parser.add_argument(
        "--grad-only", action="store_true", help="compile the loss gradient without AdamW"
    )
    return parser.parse_args()


def configure_environment(args: argparse.Namespace) -> None:
    """XLA reads its flags and log levels once, at import: set them first."""
    if args.fsdp > 1:
        flag = f"--xla_force_host_platform_device_count={args.fsdp}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    if args.phases:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        os.environ["TF_CPP_VMODULE"] = "cpu_compiler=1,ir_compiler=1,thunk_emitter=1"


def build_steps(args: argparse.Namespace) -> dict:
    """`{scan: (jitted function, its arguments, XLA module name)}`."""
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from clipjax.config import load_config
    from clipjax.parallel import batch_sharding, build_mesh, rules_table
    from clipjax.train.objective import objective_from_config
    from clipjax.train.optim import build_optimizer, learning_rate_schedule
    from clipjax.train.state import create_train_state
    from clipjax.train.step import make_grad_fn, make_train_step

    config = load_config(f"configs/clip/{args.size}.py")
    config.model.remat = args.remat
    devices = jax.devices()[: args.fsdp]
    mesh = build_mesh({"data": 1, "fsdp": args.fsdp, "tensor": 1}, devices)
    rules = rules_table(config.sharding_rules)
    size = config.model.image.image_size
    rows = args.batch * args.fsdp
    shardings = {"image": batch_sharding(mesh, rules, 4), "text": batch_sharding(mesh, rules, 2)}
    batch = {
        "image": jax.ShapeDtypeStruct(
            (rows, size, size, 3), jnp.float32, sharding=shardings["image"]
        ),
        "text": jax.ShapeDtypeStruct((rows, 77), jnp.int32, sharding=shardings["text"]),
    }
    tx = build_optimizer(config.optim, 1000)
    schedule = learning_rate_schedule(config.optim, 1000)
    steps = {}
    for scan in (False, True):
        config.model.scan_layers = scan
        spec, state, state_sh = create_train_state(config.model, 0, tx, mesh, rules)
        objective = objective_from_config(config, mesh, rules.get("batch"))
        grad_fn = make_grad_fn(spec, objective, mesh, rules.get("batch"))
        if args.grad_only:
            steps[scan] = (
                jax.jit(grad_fn),
                (state.params, batch, jax.random.key(0)),
                "jit_full_batch",
            )
        else:
            step = make_train_step(grad_fn, tx, state_sh, shardings, schedule)
            steps[scan] = (step, (state, batch), "jit_step")
    return steps


def time_compile(function, arguments: tuple, module: str, phases: bool) -> dict:
    import jax

    jax.clear_caches()
    # XLA's log is only read for --phases; otherwise its messages stay on the terminal
    with CapturedStderr() if phases else contextlib.nullcontext() as log:
        start = time.perf_counter()
        lowered = function.lower(*arguments)
        lowered_at = time.perf_counter()
        lowered.compile()
        done = time.perf_counter()
    run = {"lower": lowered_at - start, "compile": done - lowered_at}
    if phases:
        run.update(parse_xla_log(log.text, module))
    return run


def print_table(args: argparse.Namespace, results: dict) -> None:
    import jax

    what = "loss gradient only" if args.grad_only else "train step"
    print(
        f"{what}, {args.size}, {args.batch} images/device, fsdp={args.fsdp}, remat={args.remat}, "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}\n"
    )
    columns = ["lower", "compile"] + (
        ["hlo", "backend", "kernels", "reused"] if args.phases else []
    )
    counts = {"kernels": "kernels built", "reused": "kernels reused"}
    names = {"hlo": "HLO passes (s)", "backend": "backend (s)", **counts}
    header = [names.get(c, f"{c} (s)") for c in columns]
    print("| blocks | " + " | ".join(header) + " | total (s) |")
    print("|---|" + "---:|" * (len(columns) + 1))
    totals = {}
    for scan, runs in results.items():
        medians = {c: statistics.median(r[c] for r in runs) for c in columns}
        totals[scan] = medians["lower"] + medians["compile"]
        cells = [f"{medians[c]:.0f}" if c in counts else f"{medians[c]:.2f}" for c in columns]
        name = "scanned" if scan else "unrolled"
        print(f"| {name} | " + " | ".join(cells) + f" | {totals[scan]:.2f} |")
    print(f"\nscanned compiles {totals[False] / totals[True]:.2f}x faster than unrolled")


def main() -> None:
    args = parse_args()
    configure_environment(args)
    steps = build_steps(args)
    results = {False: [], True: []}
    for _ in range(args.repeats):
        for scan, (function, arguments, module) in steps.items():
            results[scan].append(time_compile(function, arguments, module, args.phases))
    print_table(args, results)


if __name__ == "__main__":
    main()

"""clipjax: train CLIP-style models, export their params.

clipjax train [--config=FILE.py[:variant]] [--workdir=DIR] [--config.a.b=value ...]
              [--distributed=auto|off|jax] [--coordinator_address=H:P --num_processes=N
              --process_id=I]   (one of several processes: see launch/)
clipjax eval [--config=FILE.py[:variant]] (--checkpoint=DIR [--step=N] | --hf=DIR |
             --open-clip=FILE (--open-clip-config=JSON | --act=A --image-heads=N
             --text-heads=N)) [--out=metrics.json]
clipjax shards (--from-folder DIR | --from-csv FILE | --from-digits) --out DIR
clipjax convert --checkpoint=WORKDIR_OR_CHECKPOINT_DIR --out=DIR [--step=N] [--format=...]
clipjax compile --config=FILE.py[:variant] --topology=v5p-512 [--slices=N] [--out=report.json]
clipjax embed --model=PATH (--images=DIR|SHARD_SPEC | --texts=FILE) --out=DIR [--dtype=float16]
clipjax caption --model=PATH --images=DIR|SHARD_SPEC [--beams=N] [--out=captions.jsonl]

Exit codes: 0 done, 1 diverged or failed, 2 bad config or arguments,
3 (compile) the step does not fit the chips' memory,
75 preempted (SIGTERM; a checkpoint was saved, rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from clipjax.aot.libtpu_env import quiet_libtpu
from clipjax.config import ConfigError, load_config
from clipjax.data.skips import UnusableData
from clipjax.data.stream_workers import DataWorkerDied
from clipjax.distributed import LaunchError
from clipjax.evaluate.benchmark import add_arguments as add_benchmark_arguments
from clipjax.inference.commands import (
    add_caption_parser,
    add_embed_parser,
    caption_command,
    embed_command,
)
from clipjax.train.preemption import PREEMPTED_EXIT_CODE, Preempted

OVERRIDE_PREFIX = "--config."


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.a.b=value` (or `--config.a.b value`) from other arguments."""
    rest, overrides = [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith(OVERRIDE_PREFIX):
            body = arg[len(OVERRIDE_PREFIX) :]
            if "=" not in body and args and not args[0].startswith("--"):
                body = f"{body}={args.pop(0)}"
            overrides.append(body)
        else:
            rest.append(arg)
    return rest, overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipjax", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train a model from a config file",
        epilog="override any field with --config.a.b=value",
    )
    train.add_argument(
        "--config",
        default=None,
        help="config file, optionally with a variant: configs/x.py:variant "
        "(default: the embedded configs/default.py)",
    )
    train.add_argument(
        "--workdir",
        default="workdir",
        help="where config.json, metrics.jsonl, TensorBoard files and checkpoints/ go; "
        "a workdir with checkpoints resumes from the latest",
    )
    _distributed_flags(train)
    _eval_parser(commands)
    _compile_parser(commands)
    add_embed_parser(commands, _distributed_flags)
    add_caption_parser(commands)
    convert = commands.add_parser(
        "convert", help="write a checkpoint's params as safetensors/npz with its config"
    )
    convert.add_argument(
        "--checkpoint", required=True, help="a workdir, its checkpoints/ or one step directory"
    )
    convert.add_argument("--out", required=True, help="output directory")
    convert.add_argument("--step", type=int, default=None, help="default: the latest step")
    convert.add_argument(
        "--format",
        choices=("safetensors", "npz", "both", "hf"),
        default="both",
        dest="fmt",
        help="hf: an HF CLIPModel (or, for SigLIP's architecture, SiglipModel) directory in OUT/hf",
    )
    shards = commands.add_parser(
        "shards", help="write webdataset shards from an image folder, a CSV/TSV or the digits"
    )
    source = shards.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-folder", help="one subfolder of images per class")
    source.add_argument("--from-csv", help=".csv or .tsv with a header (path and caption)")
    source.add_argument("--from-digits", action="store_true", help="the bundled digits")
    shards.add_argument("--out", required=True, help="output directory (no shards in it yet)")
    shards.add_argument("--samples-per-shard", type=int, default=10000)
    shards.add_argument("--path-column", default="path")
    shards.add_argument("--caption-column", default="caption")
    shards.add_argument(
        "--templates", help="file of caption templates with {c}, one per line (folders)"
    )
    shards.add_argument("--seed", type=int, default=0)
    return parser


def _eval_parser(commands) -> None:
    ev = commands.add_parser(
        "eval",
        help="run the config's evals on a checkpoint or on imported HF/open_clip weights",
        epilog="override any field with --config.a.b=value, e.g. --config.evals.digits.every=0",
    )
    ev.add_argument(
        "--config",
        default=None,
        help="with --checkpoint: a config file[:variant] whose `evals` replace the run's (the "
        "rest comes from the run's config.json); with --hf/--open-clip: the whole base config "
        "(default: the embedded one), its model replaced by the imported one",
    )
    weights = ev.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="a clipjax workdir, its checkpoints/ or one step")
    weights.add_argument("--hf", help="an HF CLIP directory (config.json + model.safetensors)")
    weights.add_argument(
        "--open-clip", dest="open_clip", help="an open_clip CLIP state dict (.safetensors/.bin/.pt)"
    )
    ev.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ev.add_argument(
        "--open-clip-config",
        dest="open_clip_config",
        help="open_clip only: the model's open_clip config JSON (open_clip/model_configs/"
        "NAME.json), which says the head counts and activation the weights do not store",
    )
    ev.add_argument(
        "--act",
        choices=("gelu", "quick_gelu"),
        default=None,
        help="open_clip without --open-clip-config: the towers' activation (quick_gelu for "
        "OpenAI and -quickgelu models)",
    )
    ev.add_argument("--image-heads", type=int, help="open_clip without --open-clip-config")
    ev.add_argument("--text-heads", type=int, help="open_clip without --open-clip-config")
    ev.add_argument("--out", help="also write the metrics to this JSON file")
    add_benchmark_arguments(ev, weights)


def _compile_parser(commands) -> None:
    aot = commands.add_parser(
        "compile",
        help="compile the train step for a TPU slice with the TPU compiler (no TPU needed) "
        "and report per-chip memory, FLOPs and whether it fits",
        epilog="override any field with --config.a.b=value; exit 0 fits, 3 does not fit",
    )
    aot.add_argument("--config", default=None, help="config file[:variant] as for train")
    aot.add_argument(
        "--topology",
        required=True,
        help="a Cloud TPU accelerator type (v4-128, v5e-256 / v5litepod-256, v5p-512, "
        "v6e-256) or a compiler shape (v5p:4x4x12, v5e:4x8)",
    )
    aot.add_argument("--slices", type=int, default=1, help="slices joined over DCN")
    aot.add_argument("--out", help="also write the report as JSON to this file")


def _compile(args, overrides: list[str]) -> int:
    import json

    from clipjax.aot.topology import CompilerMissing, parse_topology

    try:
        topology = parse_topology(args.topology, args.slices)
        if topology.platform == "cuda":
            from clipjax.aot.gpu_topology import use_deviceless_flags

            use_deviceless_flags(os.environ)
        from clipjax.aot.compile import compile_for_topology
        from clipjax.aot.report import format_report

        config = _load(args.config)
        _override(config, overrides)
        report = compile_for_topology(config, topology)
    except (ConfigError, ValueError, CompilerMissing) as exc:
        print(f"clipjax: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report.as_json(), f, indent=1)
    return 0 if report.fits else 3


def _override(config, overrides: list[str]) -> None:
    """`--config.a.b=value` overrides; `--config.evals.NAME.kind/source` add an entry."""
    from clipjax.config import apply_overrides
    from clipjax.evaluate.fields import add_entries_from_overrides

    try:
        add_entries_from_overrides(config, overrides)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    apply_overrides(config, overrides)


def _load(spec: str | None):
    """The config file `spec` with every eval entry's optional fields filled in, so
    that each can be overridden."""
    from clipjax.evaluate.fields import complete_evals

    config = load_config(spec)
    complete_evals(config)
    return config


def _eval(args, overrides: list[str]) -> int:
    import json

    from clipjax.evaluate import benchmark
    from clipjax.evaluate import standalone as sa

    try:
        run = benchmark.benchmark_args(args)
        if run is not None:
            benchmark.print_rows(benchmark.evaluate_benchmark(run), run.output)
            return 0
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"clipjax: {exc}", file=sys.stderr)
        return 2
    source = sa.WeightsSource(
        checkpoint=args.checkpoint or "",
        step=args.step,
        hf=args.hf or "",
        open_clip=args.open_clip or "",
        open_clip_config=args.open_clip_config or "",
        act=args.act,
        image_heads=args.image_heads,
        text_heads=args.text_heads,
    )
    try:
        sa.check_flags(args)
        if args.checkpoint:
            config, imported = sa.checkpoint_config(args.checkpoint, args.config), None
        else:
            config = _load(args.config)
            imported = sa.imported_params(config, source)
        _override(config, overrides)
        sa.check_config(config, imported is not None)
        from clipjax.train.validation_loss import make_batch_loss

        metrics = sa.evaluate(config, source, imported, make_batch_loss)
    except (ConfigError, OSError, ValueError, RuntimeError, ImportError) as exc:
        print(f"clipjax: {exc}", file=sys.stderr)
        return 2
    for key, value in sorted(metrics.items()):
        print(f"{key:<48} {value:.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"weights": source.describe(), **metrics}, f, indent=1)
    return 0


def _distributed_flags(train: argparse.ArgumentParser) -> None:
    group = train.add_argument_group(
        "multi-process runs",
        "by default the process group is read from JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/"
        "JAX_PROCESS_ID, srun's SLURM_* variables or GKE's TPU_WORKER_* variables",
    )
    group.add_argument(
        "--distributed",
        choices=("auto", "off", "jax"),
        default="auto",
        help="auto: from flags or the environment; off: one process; "
        "jax: let jax.distributed detect the cluster (Cloud TPU VM pods, Open MPI)",
    )
    group.add_argument("--coordinator_address", help="HOST:PORT of process 0")
    group.add_argument("--num_processes", type=int)
    group.add_argument("--process_id", type=int)


def _start_distributed(args, config=None) -> None:
    from clipjax import distributed

    group = distributed.detect(
        os.environ, args.distributed, args.coordinator_address, args.num_processes, args.process_id
    )
    if group is not None:
        timeouts = (
            distributed.Timeouts()
            if config is None
            else distributed.Timeouts.from_config(config.distributed)
        )
        distributed.initialize(group, timeouts)


def _shards(args) -> int:
    from pathlib import Path

    from clipjax.data import make_shards as ms

    out = Path(args.out)
    try:
        if args.samples_per_shard < 1:
            raise ValueError(f"--samples-per-shard={args.samples_per_shard} must be positive")
        if args.from_digits:
            from clipjax.data.writer import build_digits_shards

            built = build_digits_shards(out, samples_per_shard=args.samples_per_shard)
            print(f"digits shards: {built.root}/train, zero-shot set: {built.zeroshot_dir}")
            return 0
        report = ms.ShardReport()
        if args.from_folder:
            templates = ms.FOLDER_TEMPLATES
            if args.templates:
                templates = tuple(
                    t for t in Path(args.templates).read_text().splitlines() if t.strip()
                )
            samples = ms.folder_samples(Path(args.from_folder), templates, args.seed, report)
        else:
            table = Path(args.from_csv)
            samples = ms.csv_samples(table, args.path_column, args.caption_column, report)
        ms.write_new_shards(samples, out, args.samples_per_shard, report)
    except (OSError, ValueError) as exc:
        print(f"clipjax: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {report.written} samples in {len(report.shards)} shard(s) to {out} "
        f"(skipped {report.skipped})"
    )
    return 0


def _summary(result, workdir: str) -> str:
    done = result.steps - result.start_step
    resumed = f", resumed from step {result.start_step}" if result.start_step else ""
    final = f" (final loss {result.losses[-1]:.4f})" if result.losses else ""
    lines = ["", f"trained {done} steps in {result.wall_seconds:.1f} s wall clock{resumed}{final}"]
    for key, value in sorted(result.final_metrics.items()):
        if key.startswith(("zeroshot/", "retrieval/", "linear_probe/")):
            lines.append(f"  {key:<40} {value:.4f}")
    lines.append(
        f"metrics: {os.path.join(workdir, 'metrics.jsonl')}  "
        f"config: {os.path.join(workdir, 'config.json')}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    quiet_libtpu()
    if args.command == "compile":  # this machine's own backend only hosts the compiler
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "convert":
        return _convert(args)
    if args.command == "shards":
        return _shards(args)
    if args.command == "eval":
        return _eval(args, overrides)
    if args.command == "compile":
        return _compile(args, overrides)
    if args.command == "embed":
        return embed_command(args, _start_distributed)
    if args.command == "caption":
        return caption_command(args)
    try:
        config = _load(args.config)
        _override(config, overrides)
        _start_distributed(args, config)
        from clipjax.train.loop import train  # imports jax; errors above come first

        result = train(config, args.workdir)
    except (ConfigError, LaunchError) as exc:
        print(f"clipjax: {exc}", file=sys.stderr)
        return 2
    except UnusableData as exc:
        print(f"clipjax: unusable data: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"clipjax: training diverged: {exc}", file=sys.stderr)
        return 1
    except DataWorkerDied as exc:
        print(f"clipjax: {exc}", file=sys.stderr)
        return 1
    except Preempted as exc:
        print(f"clipjax: {exc}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    import jax

    if jax.process_index() == 0:  # one summary per run, not per process
        print(_summary(result, args.workdir))
    return 0


def _convert(args) -> int:
    from clipjax.export import FORMATS, export_params

    formats = FORMATS if args.fmt == "both" else (args.fmt,)
    try:
        written = export_params(args.checkpoint, args.out, formats, args.step)
    except (FileNotFoundError, ValueError) as exc:
        print(f"clipjax: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def console_main() -> int:
    """The `clipjax` command: `main` in a process whose malloc uses huge pages."""
    from clipjax.host_memory import reexec_with_hugepages

    reexec_with_hugepages(["-m", "clipjax.cli", *sys.argv[1:]])
    return main()


if __name__ == "__main__":
    sys.exit(console_main())

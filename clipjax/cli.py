"""`clipjax train` (more subcommands come with their issues).

clipjax train [--config=FILE.py[:variant]] [--workdir=DIR] [--config.a.b=value ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from clipjax.config import ConfigError, apply_overrides, load_config

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
        help="where config.json, metrics.jsonl and TensorBoard files go",
    )
    return parser


def _summary(result, workdir: str) -> str:
    lines = [
        "",
        f"trained {result.steps} steps in {result.wall_seconds:.1f} s wall clock "
        f"(final loss {result.losses[-1]:.4f})",
    ]
    for key, value in sorted(result.final_metrics.items()):
        if key.startswith("zeroshot/"):
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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        apply_overrides(config, overrides)
        from clipjax.train.loop import train  # imports jax; errors above come first

        result = train(config, args.workdir)
    except ConfigError as exc:
        print(f"clipjax: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"clipjax: training diverged: {exc}", file=sys.stderr)
        return 1
    print(_summary(result, args.workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

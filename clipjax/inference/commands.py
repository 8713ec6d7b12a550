"""The command-line face of `clipjax.load`: `clipjax embed` (and the flags every
command that loads a model shares)."""

from __future__ import annotations

import argparse
import sys

DEFAULT_PER_SHARD = 10_000


def embed_command(args, start_distributed) -> int:
    """`clipjax embed` with its process group started; exit 2 on bad input."""

    def run() -> int:
        start_distributed(args)
        return run_embed(args)

    return _reporting_bad_input(run)


def caption_command(args) -> int:
    """`clipjax caption`; exit 2 on bad input."""
    return _reporting_bad_input(lambda: run_caption(args))


def _reporting_bad_input(run) -> int:
    """`run()`'s exit code, or 2 with the message of a bad config, path or value
    (ConfigError and LaunchError are ValueErrors)."""
    try:
        return run()
    except (OSError, ValueError) as exc:
        print(f"clipjax: {exc}", file=sys.stderr)
        return 2


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--model and what `clipjax.load` needs besides the path."""
    parser.add_argument(
        "--model",
        required=True,
        help="a clipjax workdir, checkpoints/ or step directory, a `clipjax convert` "
        "export, an HF CLIP directory or an open_clip state dict",
    )
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--open-clip-config", help="open_clip only: its model-config JSON")
    parser.add_argument("--act", choices=("gelu", "quick_gelu"), help="open_clip only")
    parser.add_argument("--image-heads", type=int, help="open_clip only")
    parser.add_argument("--text-heads", type=int, help="open_clip only")
    parser.add_argument("--image-size", type=int, help="load at this resolution")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per device call")


def add_embed_parser(commands, distributed_flags) -> None:
    embed = commands.add_parser(
        "embed",
        help="embed a whole image folder, shard spec or text file into .npy shards",
        epilog="a rerun with the same arguments skips the output shards already written",
    )
    add_model_flags(embed)
    embed.add_argument(
        "--images", help="an image folder (any depth), a folder of .tar shards or a shard spec"
    )
    embed.add_argument("--texts", help="a UTF-8 file of texts, one per line")
    embed.add_argument("--out", required=True, help="img_emb/ and text_emb/ are written here")
    embed.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    embed.add_argument(
        "--per-shard",
        type=int,
        default=DEFAULT_PER_SHARD,
        help="folder images or text lines per output shard (shard specs: one per input shard)",
    )
    embed.add_argument("--image-key", default="webp;png;jpg;jpeg", help="image members tried")
    embed.add_argument("--workers", type=int, default=None, help="decoding processes")
    distributed_flags(embed)


def add_caption_parser(commands) -> None:
    caption = commands.add_parser(
        "caption", help="caption every image of a folder or shard spec with a CoCa model"
    )
    add_model_flags(caption)
    caption.add_argument("--images", required=True, help="an image folder or a shard spec")
    caption.add_argument("--beams", type=int, default=1, help="1: greedy decoding")
    caption.add_argument("--max-len", type=int, help="tokens (default: the context length)")
    caption.add_argument("--length-penalty", type=float, default=0.0)
    caption.add_argument("--out", help="write JSON lines here (default: key<TAB>caption lines)")
    caption.add_argument("--image-key", default="webp;png;jpg;jpeg", help="image members tried")
    caption.add_argument("--workers", type=int, default=0, help="decoding processes")


def run_caption(args) -> int:
    """`clipjax caption`: exit 1 if some image or shard could not be read."""
    import json

    from clipjax.data.decode import parse_keys
    from clipjax.inference.caption import caption_images
    from clipjax.inference.embed import image_units

    image_units(args.images, 1)  # the input exists, before the model is loaded
    model = load_model(args)
    rows = caption_images(
        model,
        args.images,
        beams=args.beams,
        max_len=args.max_len,
        length_penalty=args.length_penalty,
        workers=args.workers,
        image_keys=parse_keys(args.image_key),
    )
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 (closed below)
    failed = 0
    try:
        for row in rows:
            if "error" in row:
                failed += 1
                print(f"clipjax: {row.get('key', row['source'])}: {row['error']}", file=sys.stderr)
            if out is not None:
                out.write(json.dumps(row) + "\n")
            elif "caption" in row:
                print(f"{row['key']}\t{row['caption']}")
    finally:
        if out is not None:
            out.close()
    return 1 if failed else 0


def load_model(args):
    from clipjax.inference import load

    return load(
        args.model,
        step=args.step,
        image_size=args.image_size,
        open_clip_config=args.open_clip_config,
        act=args.act,
        image_heads=args.image_heads,
        text_heads=args.text_heads,
        batch_size=args.batch_size,
    )


def run_embed(args) -> int:
    """`clipjax embed`; the process group is already started."""
    import jax

    from clipjax.data.decode import parse_keys
    from clipjax.inference.embed import embed_images, embed_texts, image_units, text_units
    from clipjax.recipes import host_workers

    if not (args.images or args.texts):
        raise ValueError("give --images, --texts or both")
    if args.per_shard < 1:
        raise ValueError(f"--per-shard={args.per_shard}; expected at least 1")
    # inputs are listed and checked before the model is loaded
    images = image_units(args.images, args.per_shard) if args.images else None
    texts = text_units(args.texts, args.per_shard) if args.texts else None
    model = load_model(args)
    split = dict(process_index=jax.process_index(), process_count=jax.process_count())
    workers = host_workers() if args.workers is None else args.workers
    lines, failed = [], {}
    if args.images:
        with _progress("images") as bar:
            report = embed_images(
                model,
                args.images,
                args.out,
                per_unit=args.per_shard,
                dtype=args.dtype,
                workers=workers,
                image_keys=parse_keys(args.image_key),
                progress=bar.update,
                units=images,
                **split,
            )
        lines.append(_line("images", report, args.out, "img_emb"))
        failed.update(report.failed)
    if args.texts:
        with _progress("texts") as bar:
            report = embed_texts(
                model,
                args.texts,
                args.out,
                per_unit=args.per_shard,
                dtype=args.dtype,
                progress=bar.update,
                units=texts,
                **split,
            )
        lines.append(_line("texts", report, args.out, "text_emb"))
        failed.update(report.failed)
    print("\n".join(lines))
    for source, why in failed.items():
        print(f"clipjax: not written: {source}: {why}", file=sys.stderr)
    return 1 if failed else 0


def _progress(what: str):
    from tqdm import tqdm

    return tqdm(unit=" " + what, desc="embedding", disable=None, file=sys.stderr)


def _line(what: str, report, out: str, folder: str) -> str:
    return (
        f"embedded {report.rows} {what} into {len(report.written)} shard(s) in {out}/{folder} "
        f"({report.skipped} skipped; {len(report.already)} shard(s) already written)"
    )

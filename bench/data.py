"""Data loader throughput on 256 px JPEG shards -> 224 px random-resized crops.

    uv run python bench/data.py [--images 1536] [--workers 0 1 2] [--repeats 3]

Writes synthetic 256x256 JPEG shards (smooth gradients plus noise, quality 90,
roughly the size of web photos at that resolution) to a temporary directory,
then for each worker count measures, alternating, over `--repeats` rounds:

- loader: `PairLoader` in `epoch` mode with a 1000-sample shuffle buffer,
  random-resized crops to 224, normalisation, byte tokenisation and batching
  (batch 64), in samples/s after the first batch (worker start-up excluded);
- ceiling: the same JPEG bytes decoded and resized to 224 in a loop by the
  same number of processes (inline for 0), no reading, shuffling or batching.

Prints a Markdown table (median of the rounds) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _jpeg(rng: np.random.Generator) -> bytes:
    y, x = np.mgrid[0:256, 0:256]
    base = np.stack([x, y, (x + y) // 2], -1) * rng.uniform(0.3, 1.0, 3)
    pixels = np.clip(base + rng.normal(0, 12, (256, 256, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_bench_shards(root: Path, images: int, per_shard: int = 256) -> tuple[list[str], list]:
    from clipjax.data.writer import write_shards

    rng = np.random.default_rng(0)
    jpegs = [_jpeg(rng) for _ in range(images)]
    samples = (
        {"__key__": f"{i:07d}", "jpg": data, "txt": f"a synthetic photo number {i}"}
        for i, data in enumerate(jpegs)
    )
    return [str(p) for p in write_shards(samples, root, per_shard)], jpegs


def _decode_resize(chunk: list[bytes]) -> int:
    for data in chunk:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        np.asarray(image.resize((224, 224), Image.BICUBIC))
    return len(chunk)


def ceiling(jpegs: list[bytes], workers: int) -> float:
    chunks = [jpegs[i : i + 16] for i in range(0, len(jpegs), 16)]
    if workers == 0:
        start = time.perf_counter()
        done = sum(_decode_resize(c) for c in chunks)
        return done / (time.perf_counter() - start)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(_decode_resize, chunks[:workers]))  # start-up
        start = time.perf_counter()
        done = sum(pool.map(_decode_resize, chunks))
        return done / (time.perf_counter() - start)


def loader_rate(urls: list[str], samples: int, workers: int, batch: int = 64) -> float:
    from clipjax.data.decode import ImageTransform
    from clipjax.data.loader import PairLoader
    from clipjax.data.pipeline import PairDecoder
    from clipjax.data.shards import DataStats, SampleStream
    from clipjax.data.tokenizers import ByteTokenizer

    stats = DataStats()
    stream = SampleStream(urls, seed=0, mode="epoch", shuffle_buffer=1000, stats=stats)
    decoder = PairDecoder(
        transform=ImageTransform(224, (0.5,) * 3, (0.5,) * 3, train=True, crop_scale=(0.4, 1.0)),
        image_keys=("jpg",),
        text_key="txt",
        max_pixels=10**8,
        seed=(0,),
    )
    loader = PairLoader(
        stream, decoder, tokenizer=ByteTokenizer(77), batch_size=batch, workers=workers, stats=stats
    )
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    batches = samples // batch
    for _ in range(batches):
        next(iterator)
    rate = batches * batch / (time.perf_counter() - start)
    iterator.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls, jpegs = write_bench_shards(Path(tmp), args.images)
        kib = sum(len(j) for j in jpegs) / len(jpegs) / 1024
        rates = {w: {"loader": [], "ceiling": []} for w in args.workers}
        for _ in range(args.repeats):
            for w in args.workers:
                rates[w]["loader"].append(loader_rate(urls, args.images, w))
                rates[w]["ceiling"].append(ceiling(jpegs, w))
    print(
        f"{args.images} JPEGs of 256x256 ({kib:.0f} KiB each), {os.cpu_count()} CPUs, "
        f"median of {args.repeats}"
    )
    print("| workers | loader samples/s | decode-only ceiling samples/s | loader / ceiling |")
    print("|---|---|---|---|")
    for w in args.workers:
        loader, top = (statistics.median(rates[w][k]) for k in ("loader", "ceiling"))
        name = "0 (inline)" if w == 0 else str(w)
        print(f"| {name} | {loader:.0f} | {top:.0f} | {loader / top:.2f} |")


if __name__ == "__main__":
    main()

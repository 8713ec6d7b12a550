"""The training loader's throughput and main-process cost on 256 px JPEG shards.

    uv run python bench/data.py [--images 1536] [--workers 0 1 2] [--repeats 3]
    # with Grain side by side: .venv/bin/python -m pip install grain==0.2.18 first

Writes synthetic 256x256 JPEG shards (smooth gradients plus noise, quality 90,
roughly the size of web photos at that resolution) to a temporary directory,
then for each worker count measures, alternating, over `--repeats` rounds:

- loader: `train_loader` as the trainer builds it (4 streams of 250-sample shuffle
  buffers in `epoch` mode, random-resized crops to 224, byte tokenisation, batches of
  64 uint8 images), in samples/s after the first batch (start-up excluded), and the
  main process's CPU time per sample (`time.process_time`) while it takes the batches
  and while it also places each on a device (`jax.device_put`);
- ceiling: the same JPEG bytes decoded and resized to 224 in a loop by the
  same number of processes (inline for 0), no reading, shuffling or batching;
- Grain (if installed): `grain.MapDataset` over the same tar members (an offset
  index, read by seek), a global shuffle, the same decode, crop and tokeniser, batches
  of 64, `mp_prefetch` with the same worker count; and whether its iterator resumes
  exactly from `get_state()`.

Prints Markdown tables (medians of the rounds) for BENCHMARKS.md, and a projection
for 16 and 64 workers: the measured per-worker rate times the workers, capped by the
main process's ceiling (1 / its CPU time per sample).
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


STREAMS, BATCH = 4, 64


def _config(urls: list[str], workers: int):
    from clipjax.config import load_config

    config = load_config("configs/default.py")
    d = config.data
    d.update(source="shards", train_shards="::".join(urls), image_size=224, image_key="jpg")
    d.update(shuffle_buffer=250, streams=STREAMS, workers=workers, crop_scale=(0.4, 1.0))
    config.tokenizer.update(kind="bytes", context_length=77)
    config.train.batch_size = BATCH
    return config


def loader_run(urls: list[str], samples: int, workers: int, place: bool) -> tuple[float, float]:
    """(samples/s, main-process CPU microseconds per sample) of the trainer's loader."""
    import jax

    from clipjax.data.loader import train_loader
    from clipjax.data.shards import DataStats
    from clipjax.data.tokenizers import build_tokenizer

    config = _config(urls, workers)
    iterator = iter(train_loader(config, build_tokenizer(config.tokenizer), DataStats()))
    device = jax.devices()[0]
    next(iterator)
    batches = samples // BATCH
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(batches):
        batch, _ = next(iterator)
        if place:
            jax.block_until_ready(jax.device_put(batch, device))
        del batch
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    iterator.close()
    return batches * BATCH / wall, cpu / (batches * BATCH) * 1e6


class _TarMembers:
    """Random access to the bench shards' samples by an offset index (Grain's model)."""

    def __init__(self, urls: list[str]):
        import tarfile

        self.items = []
        for url in urls:
            with tarfile.open(url) as tar:
                members = {}
                for info in tar:
                    key, ext = info.name.split(".", 1)
                    members.setdefault(key, {})[ext] = (info.offset_data, info.size)
            self.items += [(url, key, m) for key, m in sorted(members.items())]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        url, key, members = self.items[i]
        sample = {"__key__": key, "__url__": url}
        with open(url, "rb") as file:
            for ext, (offset, size) in members.items():
                file.seek(offset)
                sample[ext] = file.read(size)
        return sample


class _Decode:
    def __init__(self):
        from clipjax.data.decode import ImageTransform
        from clipjax.data.pipeline import PairDecoder

        transform = ImageTransform(224, (0.5,) * 3, (0.5,) * 3, train=True, crop_scale=(0.4, 1.0))
        self.decoder = PairDecoder(transform, ("jpg",), "txt", 10**8, (0,))

    def __call__(self, index: int, sample: dict):
        return self.decoder(index, sample)


class _Collate:
    def __call__(self, pairs):
        from clipjax.data.tokenizers import ByteTokenizer

        return {
            "image": np.stack([p[0] for p in pairs]),
            "text": ByteTokenizer(77)([p[1] for p in pairs]),
        }


def _grain_iterator(urls: list[str], workers: int):
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain's worker options are absl flags
        flags.FLAGS.mark_as_parsed()

    ds = grain.MapDataset.source(_TarMembers(urls)).seed(0).shuffle().repeat()
    ds = ds.map_with_index(_Decode()).batch(BATCH, batch_fn=_Collate())
    ds = ds.to_iter_dataset()
    if workers:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(ds)


def grain_run(urls: list[str], samples: int, workers: int) -> tuple[float, float]:
    iterator = _grain_iterator(urls, workers)
    next(iterator)
    batches = samples // BATCH
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(batches):
        next(iterator)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return batches * BATCH / wall, cpu / (batches * BATCH) * 1e6


def grain_resumes_exactly(urls: list[str], workers: int) -> bool:
    iterator = _grain_iterator(urls, workers)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    want = [next(iterator)["image"] for _ in range(2)]
    resumed = _grain_iterator(urls, workers)
    resumed.set_state(state)
    got = [next(resumed)["image"] for _ in range(2)]
    return all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))


def _has_grain() -> bool:
    try:
        import grain  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    grain = _has_grain()
    kinds = ["loader", "main_us", "placed_us", "ceiling"] + ["grain", "grain_us"] * grain
    with tempfile.TemporaryDirectory() as tmp:
        urls, jpegs = write_bench_shards(Path(tmp), args.images, per_shard=args.images // 8)
        kib = sum(len(j) for j in jpegs) / len(jpegs) / 1024
        rates = {w: {k: [] for k in kinds} for w in args.workers}
        for _ in range(args.repeats):
            for w in args.workers:
                rate, main_us = loader_run(urls, args.images, w, place=False)
                rates[w]["loader"].append(rate)
                rates[w]["main_us"].append(main_us)
                rates[w]["placed_us"].append(loader_run(urls, args.images, w, place=True)[1])
                rates[w]["ceiling"].append(ceiling(jpegs, w))
                if grain:
                    rate, main_us = grain_run(urls, args.images, w)
                    rates[w]["grain"].append(rate)
                    rates[w]["grain_us"].append(main_us)
        resumes = {w: grain_resumes_exactly(urls, w) for w in args.workers if w} if grain else {}
    median = {w: {k: statistics.median(v) for k, v in r.items()} for w, r in rates.items()}
    _report(args, kib, median, resumes)


def _report(args, kib: float, median: dict, resumes: dict) -> None:
    print(
        f"{args.images} JPEGs of 256x256 ({kib:.0f} KiB each), {os.cpu_count()} CPUs, "
        f"median of {args.repeats}"
    )
    print(
        "| workers | loader samples/s | ceiling samples/s | loader / ceiling "
        "| main CPU us/sample | + device_put us/sample |"
    )
    print("|---|---|---|---|---|---|")
    for w, m in median.items():
        name = "0 (inline)" if w == 0 else str(w)
        print(
            f"| {name} | {m['loader']:.0f} | {m['ceiling']:.0f} | "
            f"{m['loader'] / m['ceiling']:.2f} | {m['main_us']:.0f} | {m['placed_us']:.0f} |"
        )
    pooled = [w for w in median if w]
    if pooled:
        per_worker = min(median[w]["loader"] / w for w in pooled)
        main_us = max(median[w]["placed_us"] for w in pooled)
        cap = 1e6 / main_us
        print(f"\nper-worker rate {per_worker:.0f} samples/s (the lowest of {pooled} workers)")
        for w in (16, 64):
            print(
                f"projection, {w} workers: min({w} x {per_worker:.0f}, {cap:.0f}) = "
                f"{min(w * per_worker, cap):.0f} samples/s"
            )
    if "grain" in next(iter(median.values())):
        print("\n| workers | Grain samples/s | clipjax / Grain | Grain main CPU us/sample |")
        print("|---|---|---|---|")
        for w, m in median.items():
            print(
                f"| {w} | {m['grain']:.0f} | {m['loader'] / m['grain']:.2f} | {m['grain_us']:.0f} |"
            )
        print(f"Grain resumes exactly from get_state(): {resumes}")


if __name__ == "__main__":
    main()

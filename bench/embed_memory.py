"""Peak host memory of `clipjax embed` against the number of images.

    uv run python bench/embed_memory.py [--counts 2000 20000] [--workers 1]

Trains the tiny default config for 3 steps (the weights do not matter here), writes
synthetic 160x120 JPEG shards of 1,000 images each, then runs `clipjax embed` on
the first 2,000 and on all 20,000 images as a separate process and samples the
resident memory of its whole process tree (the main process and its decoding
workers) every 50 ms. Checks 64 random rows of the larger run against
`clipjax.load(...).encode_image` on the same JPEGs. Prints a Markdown table for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PER_SHARD = 1000


def _jpeg(rng: np.random.Generator) -> bytes:
    y, x = np.mgrid[0:120, 0:160]
    base = np.stack([x, y, (x + y) // 2], -1) * rng.uniform(0.5, 1.5, 3)
    pixels = np.clip(base + rng.normal(0, 8, (120, 160, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=85)
    return out.getvalue()


def write_shards(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for shard in range(count // PER_SHARD):
        path = folder / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for n in range(PER_SHARD):
                data = _jpeg(rng)
                info = tarfile.TarInfo(f"{shard:05d}{n:04d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo.extend(children.get(current, []))
    return total


def run_embed(model: Path, spec: str, out: Path, workers: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "clipjax.cli",
        "embed",
        "--model",
        str(model),
        "--images",
        spec,
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--dtype",
        "float32",
    ]
    result = peak_of(command)
    result["line"] = result.pop("out").strip()
    return result


def peak_of(command: list[str]) -> dict:
    """Runs `command` from the project root; its wall time, output and the peak resident
    memory of its process tree, sampled every 50 ms."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.05)
    out, err = process.communicate()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{err.decode()[-3000:]}")
    return dict(seconds=time.perf_counter() - start, peak=peak, out=out.decode())


def check_rows(model_dir: Path, out: Path, shards: list[Path]) -> float:
    import clipjax

    model = clipjax.load(model_dir)
    rng = np.random.default_rng(1)
    worst = 0.0
    for number in rng.choice(len(shards), 4, replace=False):
        rows = np.load(out / "img_emb" / f"{number:05d}.npy")
        index = [json.loads(x) for x in (out / "img_emb" / f"{number:05d}.jsonl").open()]
        picks = rng.choice(len(index), 16, replace=False)
        with tarfile.open(shards[number]) as tar:
            images = [
                Image.open(io.BytesIO(tar.extractfile(index[p]["key"] + ".jpg").read()))
                for p in picks
            ]
        want = model.encode_image(images)
        worst = max(worst, float(np.abs(rows[picks] - want).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "clipjax.cli",
                "train",
                "--config",
                "configs/default.py:tiny",
                "--workdir",
                str(tmp / "run"),
                "--config.train.steps=3",
                "--config.optim.warmup_steps=1",
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        shards = write_shards(tmp, max(args.counts))
        rows = []
        for count in args.counts:
            spec = str(tmp / f"{{00000..{count // PER_SHARD - 1:05d}}}.tar")
            result = run_embed(tmp / "run", spec, tmp / f"out{count}", args.workers)
            rows.append((count, result))
            print(f"{count}: {result}", file=sys.stderr)
        worst = check_rows(tmp / "run", tmp / f"out{max(args.counts)}", shards)
    print(f"\nworkers {args.workers}; 64 sampled rows equal encode_image within {worst:.1e}\n")
    print("| images | shards | peak RSS, process tree (MiB) | wall (s) | images/s |")
    print("|---:|---:|---:|---:|---:|")
    for count, result in rows:
        print(
            f"| {count:,} | {count // PER_SHARD} | {result['peak'] / 2**20:,.0f} "
            f"| {result['seconds']:.1f} | {count / result['seconds']:,.0f} |"
        )


if __name__ == "__main__":
    main()

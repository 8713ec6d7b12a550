"""Peak host memory of a zero-shot eval against the size of the set: streamed
(`clipjax eval`, what training runs) and, for reference, the set read into memory
(what evals did before: `open_clip_benchmark(...).collect()`).

    uv run python bench/eval_memory.py [--counts 5000 50000] [--image-size 64]

Trains the tiny default config at `--image-size` for 3 steps (the weights do not
matter here), writes a synthetic CLIP_benchmark classification set (96x72 JPEGs and
.cls labels, 1,000 per shard, 10 classes), then runs each measurement as its own
process and samples the resident memory of its process tree every 50 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from embed_memory import peak_of
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PER_SHARD = 1000
CLASSES = 10


def write_set(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    (folder / "test").mkdir(parents=True)
    for shard in range(count // PER_SHARD):
        with tarfile.open(folder / "test" / f"{shard}.tar", "w") as tar:
            for n in range(PER_SHARD):
                pixels = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
                image = io.BytesIO()
                Image.fromarray(pixels).save(image, format="JPEG", quality=80)
                label = str(int(rng.integers(0, CLASSES))).encode()
                for ext, data in (("jpg", image.getvalue()), ("cls", label)):
                    info = tarfile.TarInfo(f"s{shard:03d}{n:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (folder / "classnames.txt").write_text("\n".join(f"class {i}" for i in range(CLASSES)))


def subset(full: Path, folder: Path, count: int) -> None:
    """`count` images of `full` (its first shards, by nshards.txt) without copying."""
    (folder / "test").mkdir(parents=True)
    for shard in range(count // PER_SHARD):
        (folder / "test" / f"{shard}.tar").symlink_to(full / "test" / f"{shard}.tar")
    (folder / "test" / "nshards.txt").write_text(str(count // PER_SHARD))
    (folder / "classnames.txt").symlink_to(full / "classnames.txt")


def streamed_eval(run: Path, folder: Path, tmp: Path) -> dict:
    config = tmp / f"eval_{folder.name}.py"
    config.write_text(
        "from clipjax.config import load_config\n"
        "from clipjax.evaluate.fields import eval_entry\n"
        "import ml_collections\n\n"
        "def get_config(arg=None):\n"
        f"    c = load_config({str(ROOT / 'configs/default.py')!r})\n"
        "    c.evals = ml_collections.ConfigDict()\n"
        "    c.evals.bench = eval_entry('zeroshot', 'clip_benchmark', "
        f"dataset_dir={str(folder)!r}, dataset_name='bench')\n"
        "    return c\n"
    )
    out = tmp / f"metrics_{folder.name}.json"
    command = [sys.executable, "-m", "clipjax.cli", "eval", "--checkpoint", str(run)]
    result = peak_of([*command, "--config", str(config), "--out", str(out)])
    result["top1"] = json.loads(out.read_text())["zeroshot/bench/top1"]
    return result


def in_memory(folder: Path, image_size: int) -> dict:
    script = (
        "from clipjax.data.decode import ImageTransform\n"
        "from clipjax.evaluate.sources.clip_benchmark import load_clip_benchmark\n"
        f"t = ImageTransform({image_size}, (0.5,) * 3, (0.5,) * 3, train=False)\n"
        f"s = load_clip_benchmark({str(folder)!r}, 'bench', t)\n"
        "print(s.images.nbytes)\n"
    )
    return peak_of([sys.executable, "-c", script])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    size = args.image_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = [sys.executable, "-m", "clipjax.cli", "train", "--config"]
        train += ["configs/default.py:tiny", "--workdir", str(tmp / "run")]
        train += ["--config.train.steps=3", "--config.optim.warmup_steps=1"]
        train += [f"--config.data.image_size={size}", f"--config.model.image.image_size={size}"]
        subprocess.run(train, check=True, cwd=ROOT, capture_output=True)
        full = tmp / "full"
        write_set(full, max(args.counts))
        rows = []
        for count in args.counts:
            folder = full if count == max(args.counts) else tmp / f"set{count}"
            if folder != full:
                subset(full, folder, count)
            streamed = streamed_eval(tmp / "run", folder, tmp)
            memory = in_memory(folder, size)
            rows.append((count, streamed, memory))
            print(count, streamed["peak"] >> 20, memory["peak"] >> 20, file=sys.stderr)
    print(f"\n{size}-px crops; zero-shot top-1 is chance (random images): a check it ran\n")
    print("| images | streamed: peak RSS (MiB) | s | top-1 | read into memory: peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    for count, streamed, memory in rows:
        print(
            f"| {count:,} | {streamed['peak'] / 2**20:,.0f} | {streamed['seconds']:.0f} "
            f"| {streamed['top1']:.3f} | {memory['peak'] / 2**20:,.0f} |"
        )


if __name__ == "__main__":
    main()

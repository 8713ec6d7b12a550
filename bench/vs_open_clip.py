"""clipjax vs open_clip training throughput on CPU, side by side in one session.

    bash bench/make_open_clip_venv.sh .venv-open-clip      # once: the peer's own venv
    uv run python bench/vs_open_clip.py --peer-python .venv-open-clip/bin/python

Both frameworks train the same towers (bench/common.py's `vit_s16` by default:
ViT-S/16-like image tower at 64 px and a 12-layer width-384 text tower, context
77, vocabulary 49408), the same batch, float32, AdamW, the CLIP loss. Runs
alternate (clipjax, open_clip, clipjax, ...), each in a fresh process that warms
up, then times `--steps` steps. Reports images/s per run and the ratio
clipjax / open_clip as min / median / max over the paired runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(command: list[str]) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(HERE))
    if result.returncode:
        raise SystemExit(f"{command[:2]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer-python", required=True, help="python of the open_clip venv")
    parser.add_argument("--size", default="vit_s16")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="runs of each framework")
    args = parser.parse_args()

    ours = [
        sys.executable,
        os.path.join(HERE, "clipjax_step.py"),
        "--size",
        args.size,
        "--image-size",
        str(args.image_size),
    ]
    arch = (
        subprocess.run(
            [*ours, "--batch", "1", "--print-arch"], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    timing = ["--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    peer = [args.peer_python, os.path.join(HERE, "open_clip_step.py"), "--arch", arch]
    rows = []
    for run in range(args.runs):
        a = run_json(ours + timing)
        b = run_json(peer + timing)
        rows.append((args.batch / a["seconds_per_step"], args.batch / b["seconds_per_step"]))
        print(
            f"run {run + 1}: clipjax {rows[-1][0]:.2f} img/s, open_clip {rows[-1][1]:.2f} img/s",
            flush=True,
        )
    versions = f"jax {a['jax']}; torch {b['torch']}, open_clip {b['open_clip']}"
    ratios = [x / y for x, y in rows]
    print(
        f"\n{args.size}, {args.image_size} px, batch {args.batch}, float32, "
        f"{len(os.sched_getaffinity(0))} CPU cores; {versions}\n"
    )
    print("| framework | images/s (min / median / max) |")
    print("|---|---|")
    for name, values in (("clipjax", [r[0] for r in rows]), ("open_clip", [r[1] for r in rows])):
        print(
            f"| {name} | {min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f} |"
        )
    print(f"\nclipjax / open_clip per paired run: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(
        f"ratio min / median / max: {min(ratios):.3f} / {statistics.median(ratios):.3f} / "
        f"{max(ratios):.3f}"
    )


if __name__ == "__main__":
    main()

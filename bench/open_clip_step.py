"""One open_clip training measurement; run by bench/vs_open_clip.py inside the peer's
virtual environment (bench/make_open_clip_venv.sh), never the project's.

Prints one JSON line: seconds per step over `--steps` steps after `--warmup`.
The step mirrors clipjax's: uint8 images normalised in the step, forward, ClipLoss,
backward, global-norm clipping at 1.0, AdamW (0.9, 0.98, eps 1e-6, wd 0.05),
logit scale clamped to [0, ln 100].
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torchvision_shim  # noqa: F401  must precede open_clip's torchvision import


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", required=True, help="JSON: embed_dim, image, text")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import open_clip
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    arch = json.loads(args.arch)
    image, text = arch["image"], arch["text"]
    vision_cfg = dict(
        image_size=image["image_size"],
        patch_size=image["patch_size"],
        width=image["width"],
        layers=image["depth"],
        head_width=image["width"] // image["heads"],
        mlp_ratio=image["mlp_ratio"],
    )
    text_cfg = dict(
        context_length=text["context_length"],
        vocab_size=text["vocab_size"],
        width=text["width"],
        heads=text["heads"],
        layers=text["depth"],
        mlp_ratio=text["mlp_ratio"],
    )
    model = open_clip.CLIP(arch["embed_dim"], vision_cfg, text_cfg).train()
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05
    )
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1) * 255

    generator = torch.Generator().manual_seed(0)
    size = image["image_size"]
    pixels = torch.randint(
        0, 256, (args.batch, 3, size, size), dtype=torch.uint8, generator=generator
    )
    tokens = torch.randint(
        1, text["vocab_size"] - 1, (args.batch, text["context_length"]), generator=generator
    )
    tokens[:, -1] = text["vocab_size"] - 1

    def step() -> float:
        images = (pixels.float() - mean) / std
        image_features, text_features, scale = model(images, tokens)
        loss = loss_fn(image_features, text_features, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss.item()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    per_step = (time.perf_counter() - start) / args.steps
    print(
        json.dumps(
            {
                "seconds_per_step": per_step,
                "torch": torch.__version__,
                "open_clip": open_clip.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()

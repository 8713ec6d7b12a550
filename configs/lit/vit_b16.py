"""LiT: lock a pretrained image tower and train a text tower against it, on LiT's
public-data recipe, for a v5e-128 slice.

    uv run clipjax train --config=configs/lit/vit_b16.py \
        --config.init_from=/runs/clip_b16/checkpoints \
        --config.data.train_shards='/data/{00000..41455}.tar' \
        --config.evals.imagenet.dataset_dir=/data/imagenet   # holds val/<wnid>/*.JPEG
    uv run clipjax compile --config=configs/lit/vit_b16.py --topology=v5e-128 \
        --config.init_from=/runs/clip_b16/checkpoints   # need not exist to compile
    uv run clipjax train --config=configs/clip/vit_b16.py:smoke --workdir=/tmp/clip_smoke
    uv run clipjax train --config=configs/lit/vit_b16.py:smoke --workdir=/tmp/lit_smoke \
        --config.init_from=/tmp/clip_smoke/checkpoints   # a few steps on a CPU

Source: Zhai et al. 2022, appendix D (recipes.LIT has the numbers: Adam 0.9/0.999, lr
1e-3, decoupled weight decay 1e-4, cosine with 2k warmup steps, batch 16,384, 20 epochs
of CC12M = 200M pairs).

    # on CPU: first a tiny CLIP, then LiT on its image tower
    uv run clipjax train --config=configs/clip/tiny.py --workdir=/tmp/clip_tiny
    uv run clipjax train --config=configs/lit/vit_b16.py:tiny --workdir=/tmp/lit_tiny \
        --config.init_from=/tmp/clip_tiny/checkpoints

`init_from` may be any clipjax checkpoint with the same image tower. Only `image/...`
is read from it
(`init_parts`); the image tower gets zero updates and no optimizer state (`model.frozen`),
and its backward pass is never computed.
"""

from clipjax.models.presets import apply_lit, clip_config, tiny_config
from clipjax.recipes import LIT, apply_recipe, smoke_variant

TOPOLOGY = "v5e-128"


def get_config(arg=None):
    if arg not in (None, "tiny", "smoke"):
        raise ValueError(
            f"configs/lit/vit_b16.py has no variant {arg!r}; expected 'tiny' or 'smoke'"
        )
    config = tiny_config() if arg == "tiny" else clip_config("vit_b16")
    with config.unlocked():
        apply_lit(config)
        if arg != "tiny":
            apply_recipe(config, LIT, eval_every=2_000)
    return smoke_variant(config, get_config("tiny")) if arg == "smoke" else config

"""CLIP ViT-L/14: OpenAI's recipe (Radford et al. 2021), for a v5p-256 slice.

    uv run clipjax train --config=configs/clip/vit_l14.py \
        --config.data.train_shards='/data/{00000..41455}.tar' \
        --config.evals.imagenet.dataset_dir=/data/imagenet   # holds val/<wnid>/*.JPEG
    uv run clipjax compile --config=configs/clip/vit_l14.py --topology=v5p-256
    uv run clipjax train --config=configs/clip/vit_l14.py:smoke   # a few steps on a CPU

Source: the paper's section 2.5 and Tables 18 and 20 (recipes.OPENAI_CLIP has the
numbers). Learning rate 4e-4 as the paper's Table 20 is commonly quoted; the table itself
was not reachable while writing this (open_clip's ViT default is 5e-4).
"""

from clipjax.models.presets import clip_config, tiny_config
from clipjax.recipes import OPENAI_CLIP, apply_recipe, smoke_variant

TOPOLOGY = "v5p-256"


def get_config(arg=None):
    if arg not in (None, "smoke"):
        raise ValueError(f"configs/clip/vit_l14.py has no variant {arg!r}; expected 'smoke'")
    config = clip_config("vit_l14")
    with config.unlocked():
        apply_recipe(config, OPENAI_CLIP.with_lr(4e-4), eval_every=20_000)
    return smoke_variant(config, tiny_config()) if arg == "smoke" else config

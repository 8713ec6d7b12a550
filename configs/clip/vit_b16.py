"""CLIP ViT-B/16: OpenAI's recipe (Radford et al. 2021), for a v5e-256 slice.

    uv run clipjax train --config=configs/clip/vit_b16.py \
        --config.data.train_shards='/data/{00000..41455}.tar' \
        --config.evals.imagenet.dataset_dir=/data/imagenet   # holds val/<wnid>/*.JPEG
    uv run clipjax compile --config=configs/clip/vit_b16.py --topology=v5e-256
    uv run clipjax train --config=configs/clip/vit_b16.py:smoke   # a few steps on a CPU

Source: the paper's section 2.5 and Tables 18 and 20 (recipes.OPENAI_CLIP has the
numbers). Learning rate 5e-4: open_clip's default for ViTs (`get_default_params`,
commented "Params from paper").

Variant `:improved`: the image and caption augmentations and label smoothing of Fini
et al. 2023's improved CLIP recipe (presets.apply_improved_baselines says which values,
and what of their recipe is not reproduced).
"""

from clipjax.models.presets import apply_improved_baselines, clip_config, tiny_config
from clipjax.recipes import OPENAI_CLIP, apply_recipe, smoke_variant

TOPOLOGY = "v5e-256"


def get_config(arg=None):
    if arg not in (None, "smoke", "improved"):
        raise ValueError(
            f"configs/clip/vit_b16.py has no variant {arg!r}; expected 'smoke' or 'improved'"
        )
    config = clip_config("vit_b16")
    with config.unlocked():
        apply_recipe(config, OPENAI_CLIP.with_lr(5e-4), eval_every=20_000)
        if arg == "improved":
            apply_improved_baselines(config)
    return smoke_variant(config, tiny_config()) if arg == "smoke" else config

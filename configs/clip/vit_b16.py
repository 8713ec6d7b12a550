"""CLIP ViT-B16 at OpenAI's published size, trained on your webdataset shards.

    uv run clipjax train --config=configs/clip/vit_b16.py \
        --config.data.train_shards='/data/{00000..41455}.tar'

The embedded default (configs/default.py) with OpenAI's tower sizes; scale the
batch and schedule to your hardware.

Variant `configs/clip/vit_b16.py:improved`: the image and caption augmentations and
label smoothing of Fini et al. 2023's improved CLIP recipe (presets.apply_improved_baselines
says which values, and what of their recipe is not reproduced).
"""

from clipjax.models.presets import apply_improved_baselines, clip_config


def get_config(arg=None):
    if arg not in (None, "", "improved"):
        raise ValueError(f"configs/clip/vit_b16.py has no variant {arg!r}; expected 'improved'")
    config = clip_config("vit_b16")
    if arg == "improved":
        apply_improved_baselines(config)
    return config

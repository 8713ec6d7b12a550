"""CLIP ViT-B32 at OpenAI's published size, trained on your webdataset shards.

    uv run clipjax train --config=configs/clip/vit_b32.py \
        --config.data.train_shards='/data/{00000..41455}.tar'

The embedded default (configs/default.py) with OpenAI's tower sizes; scale the
batch and schedule to your hardware.
"""

from clipjax.models.presets import clip_config


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/clip/vit_b32.py has no variant {arg!r}")
    return clip_config("vit_b32")

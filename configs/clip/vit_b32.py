"""CLIP ViT-B32 at OpenAI's published size, trained on your webdataset shards.

    uv run clipjax train --config=configs/clip/vit_b32.py \
        --config.data.train_shards='/data/{00000..41455}.tar'

Starts from the embedded default (configs/default.py) and sets the towers to
OpenAI's sizes; the training batch and schedule are for you to scale.
"""

from clipjax.config import DEFAULT_CONFIG, load_config
from clipjax.models.presets import apply_clip_size


def get_config(arg=None):
    config = load_config(str(DEFAULT_CONFIG))
    with config.unlocked():
        apply_clip_size(config, "vit_b32")
        config.data.source = "shards"
        config.data.image_key = "jpg;jpeg;png;webp"
        config.data.crop_scale = (0.9, 1.0)
        config.data.mean = (0.48145466, 0.4578275, 0.40821073)
        config.data.std = (0.26862954, 0.26130258, 0.27577711)
        config.evals = {}
    if arg:
        raise ValueError(f"configs/clip/vit_b32.py has no variant {arg!r}")
    return config

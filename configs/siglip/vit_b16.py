"""SigLIP ViT-B/16: CLIP's towers with the pairwise sigmoid loss and a learned bias.

    uv run clipjax train --config=configs/siglip/vit_b16.py \
        --config.data.train_shards='/data/{00000..41455}.tar'
    uv run clipjax train --config=configs/siglip/vit_b16.py:tiny   # digits, seconds on CPU

The sigmoid loss needs no all-gathered softmax normaliser; with
`loss.strategy=ring` each device only ever holds one block of pairs.
"""

from clipjax.models.presets import apply_siglip, clip_config, tiny_config


def get_config(arg=None):
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/siglip/vit_b16.py has no variant {arg!r}; expected 'tiny'")
    config = tiny_config() if arg == "tiny" else clip_config("vit_b16")
    with config.unlocked():
        apply_siglip(config)
    return config

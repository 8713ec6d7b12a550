"""LiT: lock a pretrained image tower and train a text tower against it.

    uv run clipjax train --config=configs/lit/vit_b16.py \
        --config.init_from=/runs/clip_b16/checkpoints \
        --config.data.train_shards='/data/{00000..41455}.tar'

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


def get_config(arg=None):
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/lit/vit_b16.py has no variant {arg!r}; expected 'tiny'")
    config = tiny_config() if arg == "tiny" else clip_config("vit_b16")
    with config.unlocked():
        apply_lit(config)
    return config

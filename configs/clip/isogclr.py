"""iSogCLR: CLIP with a learned temperature per training example (Qiu et al. 2023).

    uv run clipjax train --config=configs/clip/isogclr.py \
        --config.data.train_shards='/data/{00000..00331}.tar'   # CC3M from img2dataset
    uv run clipjax train --config=configs/clip/isogclr.py:tiny --workdir=/tmp/isogclr

OpenAI's ViT-B/16 towers with iSogCLR's loss at the authors' CC3M values
(`clipjax/losses/isogclr.py`), global batch 512 as theirs; at another batch,
set `loss.isogclr.rho` with it (`rho_for_batch`; the config check says so). Each
example's temperatures and moving averages live in the train state, sharded like a
batch, and are checkpointed with it; examples are numbered by shard and position, so
set `data.samples_per_shard` to img2dataset's `number_sample_per_shard` (10,000 here).
`tiny`: the small CLIP on the digits.
"""

from clipjax.models.presets import apply_isogclr, clip_config, tiny_config


def get_config(arg=None):
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/clip/isogclr.py has no variant {arg!r}; expected 'tiny'")
    config = tiny_config() if arg == "tiny" else clip_config("vit_b16")
    if arg != "tiny":
        config.train.batch_size = 512
    with config.unlocked():
        apply_isogclr(config, samples_per_shard=512 if arg == "tiny" else 10_000)
    return config

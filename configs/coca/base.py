"""CoCa-Base: a ViT-B/18 image encoder at 288 px, a 12 + 12 layer text decoder, on the
paper's recipe, for a v5p-512 slice.

    uv run clipjax train --config=configs/coca/base.py \
        --config.data.train_shards='/data/{00000..41455}.tar' \
        --config.evals.imagenet.dataset_dir=/data/imagenet   # holds val/<wnid>/*.JPEG
    uv run clipjax compile --config=configs/coca/base.py --topology=v5p-512
    uv run clipjax train --config=configs/coca/base.py:smoke  # a few steps on a CPU
    uv run clipjax train --config=configs/coca/base.py:tiny   # digits, seconds on CPU

Source: Yu et al. 2022, section 4.1 and Table 1 (recipes.COCA has the numbers: batch
65,536 for 500k steps, Adafactor with beta1 0.9 and decoupled weight decay 0.01, lr
warmed up over 2% of the steps to 8e-4 then decayed linearly; loss weights 1 and 2).

CoCa (Yu et al. 2022): the decoder's first `unimodal_depth` layers are causal text-only
self-attention with a learned CLS token appended, whose output is the contrastive text
embedding; the remaining `multimodal_depth` layers also cross-attend to image tokens
from an attentional pooler with `decoder_queries` queries. A second, one-query pooler
gives the contrastive image embedding. Loss = 1.0 x contrastive + 2.0 x captioning
(teacher-forced next-token cross-entropy, padding ignored).
"""

import ml_collections

from clipjax.models.presets import apply_coca, clip_config, tiny_config
from clipjax.recipes import COCA, apply_recipe, smoke_variant

TOPOLOGY = "v5p-512"


def coca_group(unimodal: int, multimodal: int, queries: int, heads: int):
    return ml_collections.ConfigDict(
        dict(
            unimodal_depth=unimodal,
            multimodal_depth=multimodal,
            decoder_queries=queries,
            pool_heads=heads,
            contrastive_weight=1.0,
            caption_weight=2.0,
        )
    )


def get_config(arg=None):
    if arg not in (None, "tiny", "smoke"):
        raise ValueError(f"configs/coca/base.py has no variant {arg!r}; expected 'tiny' or 'smoke'")
    if arg == "tiny":
        config = tiny_config()
        with config.unlocked():
            apply_coca(config, coca_group(1, 1, 16, 4))
        return config
    config = clip_config("vit_b16")
    with config.unlocked():
        config.model.embed_dim = 768
        config.model.image.update(dict(image_size=288, patch_size=18, act="gelu"))
        config.data.image_size = 288
        config.model.text.update(dict(width=768, heads=12, act="gelu"))
        apply_coca(config, coca_group(12, 12, 256, 8))
        apply_recipe(config, COCA, eval_every=25_000)
    return smoke_variant(config, get_config("tiny")) if arg == "smoke" else config

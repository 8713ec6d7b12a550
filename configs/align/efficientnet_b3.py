"""ALIGN with an EfficientNet-B3 image tower and a BERT-Base-shaped text encoder, on
ALIGN's training recipe, for a v5e-256 slice.

    uv run clipjax train --config=configs/align/efficientnet_b3.py \
        --config.data.train_shards='/data/{00000..41455}.tar' \
        --config.evals.imagenet.dataset_dir=/data/imagenet   # holds val/<wnid>/*.JPEG
    uv run clipjax compile --config=configs/align/efficientnet_b3.py --topology=v5e-256
    uv run clipjax train --config=configs/align/efficientnet_b3.py:smoke  # CPU, a few steps
    uv run clipjax train --config=configs/align/efficientnet_b3.py:tiny   # digits, CPU

Source: Jia et al. 2021, section 5 (recipes.ALIGN has the numbers: batch 16,384, LAMB
with weight decay 1e-5, lr warmed up to 1e-3 over 10k steps then linearly to 0 at 1.2M
steps, random crops with horizontal flips). ALIGN trained EfficientNet-L2 (width 4.3,
depth 5.3, 289 px) with BERT-Large; the towers here are smaller (B3 at 288 px, a
BERT-Base-shaped encoder): softmax InfoNCE with label smoothing 0.1, a learned
temperature from 1.0, 640-d embeddings. For BERT's own
WordPiece vocabulary pass its tokenizer.json:
    --config.tokenizer.kind=hf --config.tokenizer.path=bert/tokenizer.json
    --config.model.text.vocab_size=30522 --config.model.text.pad_id=0
(the encoder pools position 0, where BERT's [CLS] sits).
"""

from clipjax.models.presets import apply_align, clip_config, tiny_config
from clipjax.recipes import ALIGN, apply_recipe, smoke_variant

TOPOLOGY = "v5e-256"


def get_config(arg=None):
    if arg not in (None, "tiny", "smoke"):
        raise ValueError(
            f"configs/align/efficientnet_b3.py has no variant {arg!r}; expected 'tiny' or 'smoke'"
        )
    if arg == "tiny":
        config = tiny_config()
        with config.unlocked():
            apply_align(config, width=0.25, depth=0.2)
        return config
    config = clip_config("vit_b16")  # shards, BPE tokenizer, OpenAI normalisation
    with config.unlocked():
        apply_align(config, width=1.2, depth=1.4)
        config.model.embed_dim = 640
        config.data.image_size = 288
        config.model.text.update(dict(width=768, depth=12, heads=12, act="gelu"))
        config.data.mean = (0.485, 0.456, 0.406)  # ImageNet statistics, as EfficientNet
        config.data.std = (0.229, 0.224, 0.225)
        apply_recipe(config, ALIGN, eval_every=50_000)
        # data-parallel: the EfficientNet's channel counts (24, 40, ...) do not split over
        # 256 chips, and its state is small (replicated: 1.5 GiB per chip with BERT-Base)
        config.mesh.update(dict(data=-1, fsdp=1))
        config.data.crop_scale = (0.7, 1.0)  # ~ a 289 crop of 346 (0.70 of the area)
        config.data.augment.hflip_prob = 0.5
    return smoke_variant(config, get_config("tiny")) if arg == "smoke" else config

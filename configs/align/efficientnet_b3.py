"""ALIGN with an EfficientNet-B3 image tower and a BERT-Base-shaped text encoder.

    uv run clipjax train --config=configs/align/efficientnet_b3.py \
        --config.data.train_shards='/data/{00000..41455}.tar'
    uv run clipjax train --config=configs/align/efficientnet_b3.py:tiny   # digits, CPU

ALIGN (Jia et al. 2021) trained EfficientNet-L2 (width 4.3, depth 5.3, 289 px) with
BERT-Large; this file keeps the recipe at a size one host can train: softmax InfoNCE
with label smoothing 0.1, a learned temperature, 640-d embeddings. For BERT's own
WordPiece vocabulary pass its tokenizer.json:
    --config.tokenizer.kind=hf --config.tokenizer.path=bert/tokenizer.json
    --config.model.text.vocab_size=30522 --config.model.text.pad_id=0
(the encoder pools position 0, where BERT's [CLS] sits).
"""

from clipjax.models.presets import apply_align, clip_config, tiny_config


def get_config(arg=None):
    if arg not in (None, "tiny"):
        raise ValueError(
            f"configs/align/efficientnet_b3.py has no variant {arg!r}; expected 'tiny'"
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
    return config

"""SigLIP ViT-B/16 (Zhai et al. 2023): CLIP's towers with the pairwise sigmoid loss and a
learned bias, on the paper's recipe, for a v5e-256 slice.

    uv run clipjax train --config=configs/siglip/vit_b16.py \
        --config.data.train_shards='/data/{00000..41455}.tar' \
        --config.evals.imagenet.dataset_dir=/data/imagenet   # holds val/<wnid>/*.JPEG
    uv run clipjax compile --config=configs/siglip/vit_b16.py --topology=v5e-256
    uv run clipjax train --config=configs/siglip/vit_b16.py:smoke  # a few steps on a CPU
    uv run clipjax train --config=configs/siglip/vit_b16.py:tiny   # digits, seconds on CPU

Source: the paper (recipes.SIGLIP has the numbers: batch 32k, 40B examples, lr 1e-3,
weight decay 1e-4, beta2 0.95, cosine; t' = log 10 and b = -10 at init, section 3.2).
Its text encoder reads 64 tokens. Towers as SigLIP B/16 (MAP-pooled ViT-B/16, 768-wide
bidirectional text encoder); the tokenizer stays the bundled CLIP BPE: for SigLIP's
SentencePiece vocabulary pass
    --config.tokenizer.kind=sentencepiece --config.tokenizer.path=spiece.model
    --config.model.text.vocab_size=32000 --config.model.text.pad_id=<its pad id>
The sigmoid loss needs no all-gathered softmax normaliser; with `loss.strategy=ring`
(the recipe's) each device only ever holds one block of pairs.
"""

from clipjax.models.presets import apply_siglip, clip_config, tiny_config
from clipjax.recipes import SIGLIP, apply_recipe, smoke_variant

TOPOLOGY = "v5e-256"
TEXT_TOKENS = 64


def get_config(arg=None):
    if arg not in (None, "tiny", "smoke"):
        raise ValueError(
            f"configs/siglip/vit_b16.py has no variant {arg!r}; expected 'tiny' or 'smoke'"
        )
    if arg == "tiny":
        config = tiny_config()
        with config.unlocked():
            apply_siglip(config)
        return config
    config = clip_config("vit_b16")
    with config.unlocked():
        apply_siglip(config)
        # SigLIP B/16's towers: 768-wide text, 768-d embeddings, tanh GELU
        config.model.embed_dim = 768
        config.model.image.act = "gelu_tanh"
        config.model.text.update(dict(width=768, depth=12, heads=12, act="gelu_tanh"))
        config.model.text.context_length = config.tokenizer.context_length = TEXT_TOKENS
        apply_recipe(config, SIGLIP, eval_every=20_000)
    return smoke_variant(config, get_config("tiny")) if arg == "smoke" else config

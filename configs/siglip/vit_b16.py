"""SigLIP ViT-B/16: CLIP's towers with the pairwise sigmoid loss and a learned bias.

    uv run clipjax train --config=configs/siglip/vit_b16.py \
        --config.data.train_shards='/data/{00000..41455}.tar'
    uv run clipjax train --config=configs/siglip/vit_b16.py:tiny   # digits, seconds on CPU

Towers as SigLIP B/16 (MAP-pooled ViT-B/16, 768-wide bidirectional text encoder); the
tokenizer stays the bundled CLIP BPE: for SigLIP's SentencePiece vocabulary pass
    --config.tokenizer.kind=sentencepiece --config.tokenizer.path=spiece.model
    --config.model.text.vocab_size=32000 --config.model.text.pad_id=<its pad id>
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
        if arg != "tiny":  # SigLIP B/16's towers: 768-wide text, 768-d embeddings, tanh GELU
            config.model.embed_dim = 768
            config.model.image.act = "gelu_tanh"
            config.model.text.update(dict(width=768, depth=12, heads=12, act="gelu_tanh"))
    return config

"""Published CLIP tower sizes (OpenAI's ViT-B/32, ViT-B/16, ViT-L/14)."""

from __future__ import annotations

import ml_collections

# name: (embed_dim, image size, patch, image width/depth/heads, text width/depth/heads)
CLIP_SIZES = {
    "vit_b32": (512, 224, 32, 768, 12, 12, 512, 12, 8),
    "vit_b16": (512, 224, 16, 768, 12, 12, 512, 12, 8),
    "vit_l14": (768, 224, 14, 1024, 24, 16, 768, 12, 12),
}
CLIP_CONTEXT = 77
# An EfficientNet reads none of these: its size comes from its coefficients, and it
# takes any input resolution (data.image_size sets it)
VIT_ONLY_FIELDS = (
    *("image_size", "patch_size", "width", "depth", "heads", "mlp_ratio"),
    *("pool", "ln_pre", "patch_bias", "patch_dropout", "projection", "ln_eps"),
)
# CoCa's decoder is causal, pools at its appended CLS token and takes its depth from
# model.coca: the two-tower text fields that say otherwise do not apply
COCA_UNUSED_TEXT_FIELDS = (
    *("depth", "causal", "pool", "eos_id", "token_dropout"),
    *("mask_padding", "projection", "ln_eps"),
)
CLIP_VOCAB = 49408


def apply_clip_size(config: ml_collections.ConfigDict, name: str) -> None:
    """Sets `config.model` (and the matching data/tokenizer sizes) to OpenAI's `name`:
    class token, `ln_pre`, QuickGELU, MLP ratio 4, bias-free patch embedding and
    projections, context 77, vocabulary 49408 with OpenAI's BPE tokenizer."""
    if name not in CLIP_SIZES:
        raise ValueError(f"unknown CLIP size {name!r}; expected one of {sorted(CLIP_SIZES)}")
    embed, size, patch, i_width, i_depth, i_heads, t_width, t_depth, t_heads = CLIP_SIZES[name]
    m = config.model
    m.embed_dim = embed
    m.image.update(
        dict(
            image_size=size,
            patch_size=patch,
            width=i_width,
            depth=i_depth,
            heads=i_heads,
            mlp_ratio=4.0,
            act="quick_gelu",
            pool="cls",
            ln_pre=True,
            patch_bias=False,
        )
    )
    m.text.update(
        dict(
            vocab_size=CLIP_VOCAB,
            context_length=CLIP_CONTEXT,
            width=t_width,
            depth=t_depth,
            heads=t_heads,
            mlp_ratio=4.0,
            act="quick_gelu",
        )
    )
    config.data.image_size = size
    config.tokenizer.kind = "clip"  # OpenAI's BPE, the bundled vocabulary
    config.tokenizer.context_length = CLIP_CONTEXT


def clip_config(name: str) -> ml_collections.ConfigDict:
    """The embedded default with OpenAI's `name` towers, reading the user's webdataset
    shards (`data.train_shards`) with OpenAI's image normalisation."""
    from clipjax.config import DEFAULT_CONFIG, load_config

    config = load_config(str(DEFAULT_CONFIG))
    with config.unlocked():
        apply_clip_size(config, name)
        config.data.source = "shards"
        config.data.image_key = "jpg;jpeg;png;webp"
        config.data.crop_scale = (0.9, 1.0)
        config.data.mean = (0.48145466, 0.4578275, 0.40821073)
        config.data.std = (0.26862954, 0.26130258, 0.27577711)
        config.evals = {}
    return config


def tiny_config() -> ml_collections.ConfigDict:
    """The embedded default's `tiny` variant: small towers, a few steps on the digits."""
    from clipjax.config import DEFAULT_CONFIG, load_config

    return load_config(f"{DEFAULT_CONFIG}:tiny")


def apply_siglip(config: ml_collections.ConfigDict) -> None:
    """SigLIP (Zhai et al. 2023): pairwise sigmoid loss with a learned bias, t' = log 10
    and b = -10 at init; the image tower pools with a MAP head (no class token, no
    ln_pre), the text tower is bidirectional and pools its last token."""
    config.model.image.update(dict(pool="map", ln_pre=False, patch_bias=True))
    config.loss.kind = "sigmoid"
    config.model.temperature_init = 0.1  # scale t = exp(t') = 10
    config.model.logit_bias_init = -10.0
    config.model.text.causal = False
    config.model.text.pool = "last"
    config.optim.b2 = 0.95
    config.optim.weight_decay = 1e-4


def apply_align(config: ml_collections.ConfigDict, width: float, depth: float) -> None:
    """ALIGN (Jia et al. 2021): an EfficientNet image tower (no ViT fields used), a
    bidirectional BERT-style text encoder pooled at its first token, and softmax
    InfoNCE with label smoothing 0.1 and a learned temperature."""
    image = config.model.image
    for field in VIT_ONLY_FIELDS:
        del image[field]
    image.kind = "efficientnet"
    image.width_coefficient = width
    image.depth_coefficient = depth
    image.se_ratio = 0.25
    image.act = "swish"
    config.model.text.causal = False
    config.model.text.pool = "cls"
    config.loss.kind = "softmax"
    config.loss.label_smoothing = 0.1
    config.model.temperature_init = 1.0  # ALIGN learns the temperature from 1


def apply_improved_baselines(config: ml_collections.ConfigDict) -> None:
    """The augmentations and label smoothing of CLIP's improved recipe (Fini et al. 2023,
    "Improved baselines for vision-language pre-training"), with the values of its
    code's strong view: a crop of 8-100% of the area, flips, SimCLR's colour jitter
    (0.4, 0.4, 0.4, 0.1) at p=0.8, grayscale p=0.2, blur p=0.5 with sigma in
    [0.1, 2.0]; one EDA edit per caption; label smoothing 0.1.

    Not reproduced: their weak-plus-two-strong views per sample (here one view), EDA's
    synonym replacement (it needs a thesaurus; the caption's own words are inserted
    instead, and the three edits are equally likely rather than 0.4/0.4/0.2), stopword
    removal, and the MLP projectors."""
    config.data.crop_scale = (0.08, 1.0)
    config.data.augment.update(
        dict(
            hflip_prob=0.5,
            color_jitter_prob=0.8,
            color_jitter=(0.4, 0.4, 0.4, 0.1),
            grayscale_prob=0.2,
            blur_prob=0.5,
            blur_sigma=(0.1, 2.0),
            text_prob=1.0,
            text_ops=("delete", "swap", "insert"),
        )
    )
    config.data.augment.text_alpha = 0.1
    config.loss.label_smoothing = 0.1


def apply_coca(config: ml_collections.ConfigDict, coca: ml_collections.ConfigDict) -> None:
    """CoCa (Yu et al. 2022): `model.coca` sizes the decoder and weighs the two losses."""
    config.model.name = "coca"
    for field in COCA_UNUSED_TEXT_FIELDS:
        del config.model.text[field]
    config.model.coca = coca


def apply_isogclr(config: ml_collections.ConfigDict, samples_per_shard: int) -> None:
    """iSogCLR (Qiu et al. 2023): a learned temperature per example and direction, with
    the authors' CC3M values (`clipjax.losses.isogclr`). Batches carry each example's
    number, for which `samples_per_shard` is the most samples a training shard holds.

    rho is a KL radius around the uniform distribution over a row's B - 1 negatives, so
    it only means something below ln(B - 1): the authors' 6.0 goes with their global
    batch of 512 (ln 511 = 6.24). It is set to keep their margin at this config's
    `train.batch_size`; set the batch first, or `loss.isogclr.rho` after."""
    from clipjax.losses.isogclr import ISOGCLR_PARAMETERS, ISogCLRSpec, rho_for_batch

    unread = ("label_smoothing", "cwcl_weights_from")
    for field in (*unread, "alignment_weight", "uniformity_weight", "cross_uniformity_weight"):
        if field in config.loss:
            del config.loss[field]
    defaults = ISogCLRSpec()
    config.loss.kind = "isogclr"
    config.loss.isogclr = ml_collections.ConfigDict(
        {name: float(getattr(defaults, name)) for name in ISOGCLR_PARAMETERS}
    )
    config.loss.isogclr.rho = rho_for_batch(config.train.batch_size)
    config.data.samples_per_shard = samples_per_shard


def apply_lit(config: ml_collections.ConfigDict, checkpoint: str = "") -> None:
    """LiT (Zhai et al. 2022): the image tower is loaded from `checkpoint` (or the
    `init_from` given on the command line) and locked; only the text tower and the
    temperature learn."""
    config.model.frozen = ("image",)
    config.init_parts = ("image",)
    config.init_from = checkpoint

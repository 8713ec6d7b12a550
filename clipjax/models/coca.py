"""CoCa (Yu et al. 2022): contrastive captioners.

Image side: the ViT's output tokens feed two attentional poolers, one learned
query for the contrastive embedding and `coca.decoder_queries` queries for the
tokens the caption decoder cross-attends to.

Text side: a causal "unimodal" transformer over the token embeddings with a
learned CLS embedding appended after the last position; the CLS output is the
contrastive text embedding. Its other outputs go through `coca.multimodal_depth`
"multimodal" blocks (causal self-attention, cross-attention to the image tokens,
MLP) and a vocabulary projection: the captioning logits.

The CLS with padding (as in open_clip): the CLS row attends to itself and to the
non-pad tokens only, so padding after the end token never changes the text
embedding; every text row is plain causal. Because the CLS comes last, no text
position sees it, and the text outputs equal those of a run without it (the
caption path, `caption_hidden`, skips it). The CLS embedding has no position
embedding of its own: it is learned and always sits at the end, so it needs none,
and it is then the same vector whatever the sequence length.

Teacher forcing needs one pass: the decoder is causal, so running it on all of
`tokens` and keeping the logits at positions `:-1` equals running it on
`tokens[:, :-1]`; they predict `tokens[:, 1:]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clipjax.losses.caption import caption_loss
from clipjax.models.layers import (
    ZEROS,
    Attention,
    AttentionalPooler,
    Mlp,
    Transformer,
    check_remat,
    dtype_of,
    init,
    layer_norm,
    mlp_width,
    param,
    projection,
    run_blocks,
    stack_blocks,
)
from clipjax.models.text import embed_tokens, text_embeddings
from clipjax.models.two_tower import l2_normalize, log_scale_param, logit_bias_param
from clipjax.models.vit import VisionTransformer, masking_keys


class MultimodalBlock(nnx.Module):
    """Pre-LN: causal self-attention, cross-attention to the image tokens, MLP."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, act: str, *, dtype, param_dtype, rngs
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln_1 = layer_norm(width, **kw)
        self.attn = Attention(width, heads, **kw)
        self.ln_2 = layer_norm(width, **kw)
        self.cross = Attention(width, heads, **kw)
        self.ln_3 = layer_norm(width, **kw)
        self.mlp = Mlp(width, mlp_width(width, mlp_ratio), act, **kw)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln_1(x), causal=True)
        x = x + self.cross(self.ln_2(x), context=context)
        return x + self.mlp(self.ln_3(x))


class MultimodalDecoder(nnx.Module):
    """`depth` multimodal blocks, unrolled or scanned over a `layers` axis, optionally
    rematerialised (as `layers.Transformer`)."""

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        act: str,
        *,
        scan: bool,
        remat: str,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        check_remat(remat)
        self.remat = remat

        def block(rngs: nnx.Rngs) -> MultimodalBlock:
            return MultimodalBlock(
                width, heads, mlp_ratio, act, dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )

        self.blocks = stack_blocks(block, depth, scan=scan, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        return run_blocks(self.blocks, x, context, remat=self.remat)


def cls_mask(tokens: jax.Array, pad_id: int) -> jax.Array:
    """`[B, 1, L+1, L+1]` for tokens with the CLS appended: causal for the text rows;
    the CLS row (last) attends to the non-pad tokens and itself."""
    length = tokens.shape[1] + 1
    causal = jnp.tril(jnp.ones((length, length), bool))
    real = jnp.concatenate([tokens != pad_id, jnp.ones((tokens.shape[0], 1), bool)], axis=1)
    is_cls_row = (jnp.arange(length) == length - 1)[:, None]
    mask = causal[None] & (~is_cls_row[None] | real[:, None, :])
    return mask[:, None]


class UnimodalText(nnx.Module):
    """Token + position embedding and causal blocks, with a CLS appended for the
    contrastive text embedding (`ln_cls` and `proj` on the CLS output)."""

    def __init__(
        self,
        cfg,
        depth: int,
        embed_dim: int,
        *,
        scan: bool,
        remat: str,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        width = cfg.width
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.token_embed, self.pos_embed = text_embeddings(cfg, **kw)
        normal = nnx.initializers.normal(0.01)
        self.cls_embed = param(rngs, normal, (width,), ("embed",), param_dtype)
        self.encoder = Transformer(
            width, depth, cfg.heads, cfg.mlp_ratio, cfg.act, scan=scan, remat=remat, **kw
        )
        self.ln_cls = layer_norm(width, **kw)
        self.proj = projection(width, embed_dim, **kw)
        self.context_length = cfg.context_length
        self.pad_id = cfg.get("pad_id", 0)

    def _embed(self, tokens: jax.Array) -> jax.Array:
        if tokens.shape[1] > self.context_length:
            raise ValueError(
                f"{tokens.shape[1]} text tokens; expected at most context_length="
                f"{self.context_length}"
            )
        return embed_tokens(self.token_embed, self.pos_embed, tokens)

    def hidden(self, tokens: jax.Array) -> jax.Array:
        """The text positions' outputs `[B, L, width]` (no CLS: no text position sees it)."""
        return self.encoder(self._embed(tokens), causal=True)

    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(contrastive embedding `[B, embed_dim]`, text outputs `[B, L, width]`)."""
        x = self._embed(tokens)
        cls = jnp.broadcast_to(self.cls_embed[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = self.encoder(jnp.concatenate([x, cls], axis=1), mask=cls_mask(tokens, self.pad_id))
        return self.proj(self.ln_cls(x[:, -1])), x[:, :-1]


class CoCa(nnx.Module):
    """Contrastive captioner: `train_outputs` gives both embeddings and the captioning
    loss; `encode_image` / `encode_text` serve zero-shot evaluation, and
    `decoder_context` / `caption_hidden` / `vocab_logits` caption generation."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        coca = cfg.coca
        if cfg.image.get("kind", "vit") != "vit":
            raise ValueError(
                f"model.image.kind={cfg.image.kind!r}: CoCa pools ViT tokens; expected 'vit'"
            )
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), rngs=rngs)
        towers = dict(scan=cfg.scan_layers, remat=cfg.remat, **kw)
        image_width, text_width = cfg.image.width, cfg.text.width
        self.image = VisionTransformer(cfg.image, cfg.embed_dim, **towers)
        self.image.proj = None  # CoCa pools with attention; the ViT's pooled projection is unused
        self.contrastive_pool = AttentionalPooler(image_width, 1, coca.pool_heads, **kw)
        self.image_proj = projection(image_width, cfg.embed_dim, **kw)
        self.caption_pool = AttentionalPooler(
            image_width, coca.decoder_queries, coca.pool_heads, **kw
        )
        # Attention's keys come from its own width: map the image tokens into the decoder's.
        self.caption_context = projection(image_width, text_width, **kw)
        self.text = UnimodalText(cfg.text, coca.unimodal_depth, cfg.embed_dim, **towers)
        self.decoder = MultimodalDecoder(
            text_width,
            coca.multimodal_depth,
            cfg.text.heads,
            cfg.text.mlp_ratio,
            cfg.text.act,
            **towers,
        )
        self.ln_decoder = layer_norm(text_width, **kw)
        self.vocab_proj = nnx.Linear(
            text_width,
            cfg.text.vocab_size,
            kernel_init=init(nnx.initializers.normal(text_width**-0.5), ("embed", "vocab")),
            bias_init=init(ZEROS, ("vocab",)),
            **kw,
        )
        self.logit_scale = log_scale_param(cfg, rngs)
        self.logit_bias = logit_bias_param(cfg, rngs)
        self.pad_id = cfg.text.get("pad_id", 0)
        self.context_length = cfg.text.context_length

    # -- image -----------------------------------------------------------------

    def _image_embedding(self, tokens: jax.Array) -> jax.Array:
        return self.image_proj(self.contrastive_pool(tokens)[:, 0])

    def _decoder_context(self, tokens: jax.Array) -> jax.Array:
        return self.caption_context(self.caption_pool(tokens))

    def image_features(self, images: jax.Array) -> jax.Array:
        """The contrastive image embedding before L2 normalisation."""
        return self._image_embedding(self.image.tokens(images))

    def text_features(self, tokens: jax.Array) -> jax.Array:
        """The contrastive text embedding before L2 normalisation."""
        return self.text(tokens)[0]

    def encode_image(self, images: jax.Array) -> jax.Array:
        return l2_normalize(self.image_features(images))

    def decoder_context(self, images: jax.Array) -> jax.Array:
        """The image tokens the caption decoder attends to: `[B, decoder_queries, width]`."""
        return self._decoder_context(self.image.tokens(images))

    # -- text ------------------------------------------------------------------

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        return l2_normalize(self.text_features(tokens))

    def _decode(self, context: jax.Array, text_hidden: jax.Array) -> jax.Array:
        return self.ln_decoder(self.decoder(text_hidden, context))

    def caption_hidden(self, context: jax.Array, tokens: jax.Array) -> jax.Array:
        """Decoder outputs `[B, L, width]` before the vocabulary projection; position t
        predicts token t+1 and depends on `tokens[:, :t+1]` only."""
        return self._decode(context, self.text.hidden(tokens))

    def vocab_logits(self, hidden: jax.Array) -> jax.Array:
        return self.vocab_proj(hidden).astype(jnp.float32)

    def caption_logits(self, context: jax.Array, tokens: jax.Array) -> jax.Array:
        """float32 `[B, L, vocab]`: the next-token logits after every position."""
        return self.vocab_logits(self.caption_hidden(context, tokens))

    # -- training --------------------------------------------------------------

    def train_outputs(self, batch: dict[str, jax.Array], rng: jax.Array | None = None) -> dict:
        """Both embeddings (L2-normalised float32) and the teacher-forced caption loss
        of `batch["text"]` given `batch["image"]` (pad targets excluded); `rng` draws
        the patch masks (FLIP) from `batch["row"]`."""
        image_tokens = self.image.tokens(batch["image"], masking_keys(self.image, batch, rng))
        tokens = batch["text"]
        text_embedding, text_hidden = self.text(tokens)
        context = self._decoder_context(image_tokens)
        logits = self.vocab_logits(self._decode(context, text_hidden[:, :-1]))
        loss, _ = caption_loss(logits, tokens[:, 1:], self.pad_id)
        return {
            "embeddings": {
                "image": l2_normalize(self._image_embedding(image_tokens)),
                "text": l2_normalize(text_embedding),
            },
            "caption_loss": loss,
        }

    def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encode_image(images), self.encode_text(tokens)

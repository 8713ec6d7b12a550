"""Text transformer: causal and pooled at the end-of-text token (CLIP), or bidirectional
over the non-padding tokens and pooled at position 0 (BERT-style, ALIGN)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clipjax.models.layers import (
    LAYER_NORM_EPS,
    Transformer,
    init,
    layer_norm,
    param,
    set_layer_norm_eps,
    tower_projection,
)

TEXT_POOLS = ("argmax", "last", "eos", "cls", "final")


def end_positions(tokens: jax.Array, pool: str, pad_id: int = 0, eos_id: int = -1) -> jax.Array:
    """Where each sequence is pooled: at its end token, being the largest id ("argmax"),
    the last position that is not padding ("last") or the first `eos_id` ("eos"); or
    at position 0 ("cls"), or at the final position whatever it holds ("final": SigLIP,
    whose captions are padded to the full length)."""
    if pool == "cls":
        return jnp.zeros(tokens.shape[:1], jnp.int32)
    if pool == "final":
        return jnp.full(tokens.shape[:1], tokens.shape[1] - 1, jnp.int32)
    if pool == "eos":
        return jnp.argmax(tokens == eos_id, axis=-1)
    if pool == "last":
        not_pad = (tokens != pad_id)[:, ::-1]
        return tokens.shape[1] - 1 - jnp.argmax(not_pad, axis=-1)
    return jnp.argmax(tokens, axis=-1)


def kept_tokens(length: int, token_dropout: float) -> int:
    """How many of a caption's `length` positions FLIP's text masking keeps."""
    return max(1, round(length * (1.0 - token_dropout)))


def kept_token_indices(
    keys: jax.Array, tokens: jax.Array, pooled: jax.Array, pad_id: int, keep: int
) -> jax.Array:
    """`[B, keep]` positions each caption keeps, in order: its pooled position always,
    then padding is dropped before text (Li et al. 2023, FLIP: masking padding first),
    the text tokens dropped at random."""
    noise = jax.vmap(lambda key: jax.random.uniform(key, tokens.shape[1:]))(keys)
    order = jnp.where(tokens == pad_id, 2.0 + noise, noise)  # larger: dropped first
    order = jnp.where(jnp.arange(tokens.shape[1]) == pooled[:, None], -1.0, order)
    return jnp.sort(jnp.argsort(order, axis=-1)[:, :keep], axis=-1)


def text_embeddings(cfg, *, dtype, param_dtype, rngs: nnx.Rngs) -> tuple[nnx.Embed, nnx.Param]:
    """Token embeddings `[vocab, width]` and learned positions `[context_length, width]`."""
    token_embed = nnx.Embed(
        cfg.vocab_size,
        cfg.width,
        embedding_init=init(nnx.initializers.normal(0.02), ("vocab", "embed")),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )
    positions = (cfg.context_length, cfg.width)
    normal = nnx.initializers.normal(0.01)
    return token_embed, param(rngs, normal, positions, (None, "embed"), param_dtype)


def embed_tokens(token_embed: nnx.Embed, pos_embed: nnx.Param, tokens: jax.Array) -> jax.Array:
    x = token_embed(tokens)
    return x + pos_embed[...][: tokens.shape[1]].astype(x.dtype)


class TextTransformer(nnx.Module):
    """Token + position embedding, encoder, final LN, pooling, projection.

    `pool="argmax"`: as in CLIP, the end-of-text token has the largest id in the
    vocabulary, so its position is the argmax of the token ids. `pool="last"`: the
    last token that is not `pad_id` (other vocabularies). `pool="eos"`: the first
    `eos_id` (HF CLIP checkpoints whose end token is not the largest id). `pool="cls"`:
    position 0 (the start token), for a bidirectional encoder.

    `causal=True` (default): each token attends to itself and earlier ones (CLIP).
    `causal=False`: every token attends to every non-`pad_id` token, so the output
    does not depend on how much padding follows the text; with `mask_padding=False`
    (SigLIP) padding is attended like any token.
    """

    def __init__(
        self, cfg, embed_dim: int, *, scan: bool, remat: str, dtype, param_dtype, rngs: nnx.Rngs
    ):
        self.pool = cfg.get("pool", "argmax")
        self.causal = cfg.get("causal", True)
        if self.pool == "cls" and self.causal:
            raise ValueError(
                "text.pool='cls' with text.causal=True pools a token that sees only itself; "
                "set text.causal=False for a bidirectional encoder"
            )
        width = cfg.width
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.token_embed, self.pos_embed = text_embeddings(cfg, **kw)
        self.encoder = Transformer(
            width, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.act, scan=scan, remat=remat, **kw
        )
        self.ln_final = layer_norm(width, **kw)
        self.proj = tower_projection(cfg.get("projection", "linear"), width, embed_dim, **kw)
        set_layer_norm_eps(self, cfg.get("ln_eps", LAYER_NORM_EPS))
        self.mask_padding = cfg.get("mask_padding", True)
        self.pad_id = cfg.get("pad_id", 0)
        self.eos_id = cfg.get("eos_id", -1)
        self.token_dropout = cfg.get("token_dropout", 0.0)

    def masks_inputs(self) -> bool:
        return self.token_dropout > 0

    def __call__(self, tokens: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        """`keys` (training with `token_dropout`): one per caption, drawing the positions
        it keeps after the position embedding; None keeps every token."""
        x = embed_tokens(self.token_embed, self.pos_embed, tokens)
        if keys is not None:
            pooled = end_positions(tokens, self.pool, self.pad_id, self.eos_id)
            keep = kept_tokens(tokens.shape[1], self.token_dropout)
            kept = kept_token_indices(keys, tokens, pooled, self.pad_id, keep)
            x = jnp.take_along_axis(x, kept[:, :, None], axis=1)
            tokens = jnp.take_along_axis(tokens, kept, axis=1)
        # Key padding mask [B, 1, 1, L]; the causal mask already hides later padding.
        masked = not self.causal and self.mask_padding
        mask = (tokens != self.pad_id)[:, None, None, :] if masked else None
        x = self.ln_final(self.encoder(x, causal=self.causal, mask=mask))
        eot = end_positions(tokens, self.pool, self.pad_id, self.eos_id)
        pooled = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        return pooled if self.proj is None else self.proj(pooled)

"""Causal text transformer (CLIP's text tower), pooled at the end-of-text token."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clipjax.models.layers import Transformer, init, layer_norm, param, projection

TEXT_POOLS = ("argmax", "last", "eos")


def end_positions(tokens: jax.Array, pool: str, pad_id: int = 0, eos_id: int = -1) -> jax.Array:
    """Where each sequence's end token is: the largest id ("argmax"), the last
    position that is not padding ("last") or the first `eos_id` ("eos")."""
    if pool == "eos":
        return jnp.argmax(tokens == eos_id, axis=-1)
    if pool == "last":
        not_pad = (tokens != pad_id)[:, ::-1]
        return tokens.shape[1] - 1 - jnp.argmax(not_pad, axis=-1)
    return jnp.argmax(tokens, axis=-1)


class TextTransformer(nnx.Module):
    """Token + position embedding, causal encoder, final LN, end-token pooling, projection.

    `pool="argmax"`: as in CLIP, the end-of-text token has the largest id in the
    vocabulary, so its position is the argmax of the token ids. `pool="last"`: the
    last token that is not `pad_id` (other vocabularies). `pool="eos"`: the first
    `eos_id` (HF CLIP checkpoints whose end token is not the largest id).
    """

    def __init__(
        self, cfg, embed_dim: int, *, scan: bool, remat: str, dtype, param_dtype, rngs: nnx.Rngs
    ):
        width = cfg.width
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.token_embed = nnx.Embed(
            cfg.vocab_size,
            width,
            embedding_init=init(nnx.initializers.normal(0.02), ("vocab", "embed")),
            **kw,
        )
        self.pos_embed = param(
            rngs,
            nnx.initializers.normal(0.01),
            (cfg.context_length, width),
            (None, "embed"),
            param_dtype,
        )
        self.encoder = Transformer(
            width, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.act, scan=scan, remat=remat, **kw
        )
        self.ln_final = layer_norm(width, **kw)
        self.proj = projection(width, embed_dim, **kw)
        self.pool = cfg.get("pool", "argmax")
        self.pad_id = cfg.get("pad_id", 0)
        self.eos_id = cfg.get("eos_id", -1)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.token_embed(tokens)
        x = x + self.pos_embed[...][: tokens.shape[1]].astype(x.dtype)
        x = self.ln_final(self.encoder(x, causal=True))
        eot = end_positions(tokens, self.pool, self.pad_id, self.eos_id)
        pooled = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        return self.proj(pooled)

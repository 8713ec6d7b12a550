"""Key/value caches for CoCa's caption decoder: one new token per step at O(L) cost.

Without a cache every step re-runs the unimodal and multimodal stacks on the whole
prefix (O(L^2) per caption, O(L) per token for every layer). With one, each causal
self-attention layer keeps the keys and values of the positions decoded so far in
a `[N, max_len, heads, head_dim]` buffer; a step embeds the new token, writes its
key and value at position t, and attends over positions 0..t. The image tokens'
keys and values for each cross-attention layer are computed once per caption.

A step's output equals `CoCa.caption_hidden` at that position up to float
rounding (the masked positions contribute exactly zero); decoding with and without
the cache picks the same tokens (tests/test_coca.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clipjax.models.attention import attend


def layer_modules(blocks: nnx.Module) -> list[nnx.Module]:
    """The blocks of a `stack_blocks` stack, one module per layer (scanned stacks are
    sliced along their `layers` axis)."""
    if isinstance(blocks, nnx.List):
        return list(blocks)
    graphdef, state = nnx.split(blocks)
    depth = jax.tree.leaves(state)[0].shape[0]
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(depth)]


def _heads(attn) -> tuple[int, int]:
    return attn.query.kernel.shape[-2:]  # (heads, head_dim)


def init_cache(model, context: jax.Array, max_len: int) -> dict:
    """Empty self-attention caches for `context.shape[0]` captions and the image
    tokens' cross-attention keys and values, layer by layer."""
    rows = context.shape[0]
    dtype = context.dtype

    def empty(block) -> dict:
        shape = (rows, max_len, *_heads(block.attn))
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    unimodal = [empty(b) for b in layer_modules(model.text.encoder.blocks)]
    multimodal = []
    for block in layer_modules(model.decoder.blocks):
        entry = empty(block)
        entry["cross_k"] = block.cross.key(context)
        entry["cross_v"] = block.cross.value(context)
        multimodal.append(entry)
    return {"unimodal": unimodal, "multimodal": multimodal}


def _self_attention(attn, h: jax.Array, entry: dict, t: jax.Array) -> tuple[jax.Array, dict]:
    k = jax.lax.dynamic_update_slice_in_dim(entry["k"], attn.key(h).astype(entry["k"].dtype), t, 1)
    v = jax.lax.dynamic_update_slice_in_dim(
        entry["v"], attn.value(h).astype(entry["v"].dtype), t, 1
    )
    seen = (jnp.arange(k.shape[1]) <= t)[None, None, None, :]
    out = attn.out(attend(attn.query(h), k, v, mask=seen))
    return out, {**entry, "k": k, "v": v}


def step(model, cache: dict, tokens: jax.Array, t: jax.Array) -> tuple[jax.Array, dict]:
    """The decoder output `[N, width]` at position `t` for `tokens` `[N]` (the token at
    position t), and the cache with position t written."""
    text = model.text
    embed = text.token_embed(tokens[:, None])
    pos = jax.lax.dynamic_index_in_dim(text.pos_embed[...], t, axis=0, keepdims=True)
    x = embed + pos.astype(embed.dtype)
    unimodal = []
    for block, entry in zip(layer_modules(text.encoder.blocks), cache["unimodal"], strict=True):
        attended, entry = _self_attention(block.attn, block.ln_1(x), entry, t)
        x = x + attended
        x = x + block.mlp(block.ln_2(x))
        unimodal.append(entry)
    multimodal = []
    for block, entry in zip(layer_modules(model.decoder.blocks), cache["multimodal"], strict=True):
        attended, entry = _self_attention(block.attn, block.ln_1(x), entry, t)
        x = x + attended
        cross = block.cross
        q = cross.query(block.ln_2(x))
        x = x + cross.out(attend(q, entry["cross_k"], entry["cross_v"]))
        x = x + block.mlp(block.ln_3(x))
        multimodal.append(entry)
    hidden = model.ln_decoder(x)[:, 0]
    return hidden, {"unimodal": unimodal, "multimodal": multimodal}


def reorder(cache: dict, rows: jax.Array) -> dict:
    """The cache with its caption rows taken in the order `rows` (beam search keeps
    the parents of the surviving hypotheses)."""
    return jax.tree.map(lambda a: jnp.take(a, rows, axis=0), cache)

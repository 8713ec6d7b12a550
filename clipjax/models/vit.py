"""Vision Transformer image tower."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clipjax.models.layers import (
    ZEROS,
    MapHead,
    Transformer,
    init,
    layer_norm,
    param,
    projection,
)

POOLS = ("cls", "gap", "map")  # class token | mean of tokens | attention-pooled (MAP)


class VisionTransformer(nnx.Module):
    """Patchify, (class token), position embedding, pre-LN encoder, pool, project."""

    def __init__(
        self, cfg, embed_dim: int, *, scan: bool, remat: str, dtype, param_dtype, rngs: nnx.Rngs
    ):
        if cfg.pool not in POOLS:
            raise ValueError(f"image.pool={cfg.pool!r} is unknown; expected one of {POOLS}")
        width, patch = cfg.width, cfg.patch_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.pool = cfg.pool
        self.patch_embed = nnx.Conv(
            3,
            width,
            kernel_size=(patch, patch),
            strides=(patch, patch),
            padding="VALID",
            kernel_init=init(nnx.initializers.lecun_normal(), (None, None, None, "embed")),
            bias_init=init(ZEROS, ("embed",)),
            use_bias=cfg.patch_bias,
            **kw,
        )
        tokens = (cfg.image_size // patch) ** 2 + (cfg.pool == "cls")
        normal = nnx.initializers.normal(width**-0.5)
        if cfg.pool == "cls":
            self.cls_token = param(rngs, normal, (width,), ("embed",), param_dtype)
        self.pos_embed = param(rngs, normal, (tokens, width), (None, "embed"), param_dtype)
        self.ln_pre = layer_norm(width, **kw) if cfg.ln_pre else None
        self.encoder = Transformer(
            width, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.act, scan=scan, remat=remat, **kw
        )
        self.ln_post = layer_norm(width, **kw)
        if cfg.pool == "map":
            self.map_head = MapHead(width, cfg.heads, cfg.mlp_ratio, cfg.act, **kw)
        self.proj = projection(width, embed_dim, **kw)
        self.dtype = dtype

    def _encode(self, images: jax.Array) -> jax.Array:
        """Patchify, (class token), position embedding, ln_pre, encoder: `[B, T, width]`
        before `ln_post`."""
        x = self.patch_embed(images.astype(self.dtype))
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.pool == "cls":
            cls = jnp.broadcast_to(
                self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1])
            )
            x = jnp.concatenate([cls, x], axis=1)
        x = x + self.pos_embed[...].astype(x.dtype)
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        return self.encoder(x)

    def tokens(self, images: jax.Array) -> jax.Array:
        """Every output token (class token first, if any) after `ln_post`: `[B, T, width]`,
        e.g. for attentional pooling (CoCa)."""
        return self.ln_post(self._encode(images))

    def __call__(self, images: jax.Array) -> jax.Array:
        if self.pool == "map":  # as big_vision: the encoder's final norm, then the head
            return self.proj(self.map_head(self.tokens(images)))
        # Pools before ln_post, not over `tokens()`: "gap" averages un-normalised tokens.
        x = self._encode(images)
        pooled = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        return self.proj(self.ln_post(pooled))

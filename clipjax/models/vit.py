"""Vision Transformer image tower."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clipjax.models.layers import (
    LAYER_NORM_EPS,
    ZEROS,
    MapHead,
    Transformer,
    init,
    layer_norm,
    param,
    set_layer_norm_eps,
    tower_projection,
)

POOLS = ("cls", "gap", "map")  # class token | mean of tokens | attention-pooled (MAP)


def kept_patches(patches: int, patch_dropout: float) -> int:
    """How many of `patches` tokens FLIP's masking keeps per image (at least one)."""
    return max(1, round(patches * (1.0 - patch_dropout)))


def example_keys(rng: jax.Array, rows: jax.Array) -> jax.Array:
    """One key per example from its global row: the same masks whatever the mesh, the
    micro-batching or the process count."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, rows)


def masking_keys(tower, batch: dict, rng: jax.Array | None) -> jax.Array | None:
    """Per-example keys for `tower`'s patch or token masking in a train step (`rng`
    given, the batch's global `row` indices present), or None: no masking."""
    if rng is None or not getattr(tower, "masks_inputs", lambda: False)():
        return None
    if "row" not in batch:
        raise ValueError("FLIP's masking needs the batch's global row indices under 'row'")
    return example_keys(rng, batch["row"])


def kept_patch_indices(keys: jax.Array, patches: int, keep: int) -> jax.Array:
    """`[B, keep]` indices of the patches each example keeps: a uniformly random subset
    per image (Li et al. 2023, FLIP), in increasing order."""
    noise = jax.vmap(lambda key: jax.random.uniform(key, (patches,)))(keys)
    return jnp.sort(jnp.argsort(noise, axis=-1)[:, :keep], axis=-1)


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
        self.patch_dropout = cfg.get("patch_dropout", 0.0)  # FLIP: in training only
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
        self.proj = tower_projection(cfg.get("projection", "linear"), width, embed_dim, **kw)
        self.dtype = dtype
        set_layer_norm_eps(self, cfg.get("ln_eps", LAYER_NORM_EPS))

    def _encode(self, images: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        """Patchify, position embedding, (FLIP masking with per-example `keys`), (class
        token), ln_pre, encoder: `[B, T, width]` before `ln_post`."""
        x = self.patch_embed(images.astype(self.dtype))
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        pos = self.pos_embed[...].astype(x.dtype)
        if self.pool == "cls":
            x = x + pos[1:]
            if keys is not None:
                x = self._drop_patches(x, keys)
            cls = self.cls_token[...].astype(x.dtype) + pos[0]
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1])), x], axis=1)
        else:
            x = x + pos
            if keys is not None:
                x = self._drop_patches(x, keys)
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        return self.encoder(x)

    def _drop_patches(self, x: jax.Array, keys: jax.Array) -> jax.Array:
        keep = kept_patch_indices(keys, x.shape[1], kept_patches(x.shape[1], self.patch_dropout))
        return jnp.take_along_axis(x, keep[..., None], axis=1)

    def masks_inputs(self) -> bool:
        """Whether training drops patch tokens (`model.image.patch_dropout` > 0)."""
        return self.patch_dropout > 0

    def tokens(self, images: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        """Every output token (class token first, if any) after `ln_post`: `[B, T, width]`,
        e.g. for attentional pooling (CoCa); with `keys`, only the kept patches'."""
        return self.ln_post(self._encode(images, keys))

    def __call__(self, images: jax.Array, keys: jax.Array | None = None) -> jax.Array:
        """The image embedding; `keys` (one per example, training only) drop
        `patch_dropout` of the patch tokens."""
        if self.pool == "map":  # as big_vision: the encoder's final norm, then the head
            return self._project(self.map_head(self.tokens(images, keys)))
        # Pools before ln_post, not over `tokens()`: "gap" averages un-normalised tokens.
        x = self._encode(images, keys)
        pooled = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        return self._project(self.ln_post(pooled))

    def _project(self, x: jax.Array) -> jax.Array:
        return x if self.proj is None else self.proj(x)

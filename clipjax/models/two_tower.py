"""Dual encoder: an image tower and a text tower with a learned temperature."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from clipjax.models.convnet import EfficientNet
from clipjax.models.layers import dtype_of, param
from clipjax.models.text import TextTransformer
from clipjax.models.vit import VisionTransformer, masking_keys

# The log-scale is clamped to [0, ln 100] after each update (see train.step).
MAX_LOG_SCALE = math.log(100.0)

TEXT_MASK_STREAM = 1  # the text tower's masks: a stream apart from the image tower's
IMAGE_TOWERS = {"vit": VisionTransformer, "efficientnet": EfficientNet}


def image_tower_class(image_cfg) -> type[nnx.Module]:
    """The image tower class named by `image_cfg.kind` (default "vit")."""
    kind = image_cfg.get("kind", "vit")
    if kind not in IMAGE_TOWERS:
        raise ValueError(
            f"model.image.kind={kind!r} is unknown; expected one of {tuple(IMAGE_TOWERS)}"
        )
    return IMAGE_TOWERS[kind]


def log_scale_param(cfg, rngs: nnx.Rngs) -> nnx.Param:
    """The learned log inverse temperature, log(1 / `cfg.temperature_init`)."""
    log_scale = math.log(1.0 / cfg.temperature_init)
    return param(rngs, nnx.initializers.constant(log_scale), (), (), jnp.float32)


def logit_bias_param(cfg, rngs: nnx.Rngs) -> nnx.Param | None:
    """SigLIP's learned bias when `cfg.logit_bias_init` is set, else None."""
    if cfg.get("logit_bias_init") is None:
        return None
    return param(rngs, nnx.initializers.constant(cfg.logit_bias_init), (), (), jnp.float32)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class TwoTower(nnx.Module):
    """CLIP/ALIGN-style model; `__call__` returns L2-normalised float32 embeddings.

    The image tower is a ViT or, with `cfg.image.kind="efficientnet"`, an EfficientNet.
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        kw = dict(
            dtype=dtype_of(cfg.dtype),
            param_dtype=dtype_of(cfg.param_dtype),
            rngs=rngs,
            scan=cfg.scan_layers,
            remat=cfg.remat,
        )
        self.image = image_tower_class(cfg.image)(cfg.image, cfg.embed_dim, **kw)
        self.text = TextTransformer(cfg.text, cfg.embed_dim, **kw)
        self.logit_scale = log_scale_param(cfg, rngs)
        self.logit_bias = logit_bias_param(cfg, rngs)

    def image_features(self, images: jax.Array) -> jax.Array:
        """The image embedding before L2 normalisation."""
        return self.image(images)

    def text_features(self, tokens: jax.Array) -> jax.Array:
        """The text embedding before L2 normalisation."""
        return self.text(tokens)

    def encode_image(self, images: jax.Array) -> jax.Array:
        return l2_normalize(self.image_features(images))

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        return l2_normalize(self.text_features(tokens))

    def train_outputs(self, batch: dict[str, jax.Array], rng: jax.Array | None = None) -> dict:
        """What the train step needs: L2-normalised float32 embeddings by modality; `rng`
        draws the image tower's patch masks and the text tower's token masks (FLIP), per
        example from `batch["row"]`."""
        keys = masking_keys(self.image, batch, rng)
        image = self.image(batch["image"]) if keys is None else self.image(batch["image"], keys)
        text_rng = None if rng is None else jax.random.fold_in(rng, TEXT_MASK_STREAM)
        keys = masking_keys(self.text, batch, text_rng)
        return {
            "embeddings": {
                "image": l2_normalize(image),
                "text": l2_normalize(self.text(batch["text"], keys)),
            }
        }

    def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encode_image(images), self.encode_text(tokens)

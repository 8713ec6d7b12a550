"""The ViT's MAP head: attention pooling that ignores token order, used by SigLIP."""

import jax
import numpy as np
from flax import nnx

from clipjax.config import load_config
from clipjax.models import build_model
from clipjax.models.layers import MapHead


def test_map_head_is_invariant_to_token_order_and_sensitive_to_content():
    with nnx.use_eager_sharding(False):
        head = MapHead(
            32, 4, 2.0, "gelu", dtype=np.float32, param_dtype=np.float32, rngs=nnx.Rngs(0)
        )
    tokens = jax.random.normal(jax.random.key(1), (2, 9, 32))
    pooled = head(tokens)
    assert pooled.shape == (2, 32)
    shuffled = tokens[:, np.random.default_rng(0).permutation(9)]
    np.testing.assert_allclose(head(shuffled), pooled, atol=1e-5)
    changed = tokens.at[0, 4].add(1.0)
    moved = np.abs(np.asarray(head(changed) - pooled)).max(axis=1)
    assert moved[0] > 1e-3 and moved[1] < 1e-6


def test_siglip_image_tower_pools_with_map():
    config = load_config("configs/siglip/vit_b16.py:tiny")
    with nnx.use_eager_sharding(False):
        model = build_model(config.model, nnx.Rngs(0))
    assert model.image.pool == "map" and model.image.ln_pre is None
    assert not hasattr(model.image, "cls_token")
    images = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    embedding = model.encode_image(images)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    published = load_config("configs/siglip/vit_b16.py").model
    assert (published.embed_dim, published.text.width, published.image.pool) == (768, 768, "map")

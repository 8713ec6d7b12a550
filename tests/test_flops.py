"""The architecture FLOP count agrees with XLA's own count and with published numbers."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from clipjax.config import load_config
from clipjax.flops import (
    cpu_peak,
    device_peak,
    forward_flops_per_example,
    image_tower_flops,
    train_flops_per_example,
)
from clipjax.models import build_model


def xla_forward_flops(model_cfg, batch: int) -> float:
    with nnx.use_eager_sharding(False):
        model = build_model(model_cfg, nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def forward(state, images, tokens):
        return nnx.merge(graphdef, state)(images, tokens)

    size, context = model_cfg.image.image_size, model_cfg.text.context_length
    images = jnp.zeros((batch, size, size, 3))
    tokens = jnp.zeros((batch, context), jnp.int32)
    cost = jax.jit(forward).lower(state, images, tokens).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"]


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_matmul_count_is_most_of_xla_count(pool):
    """XLA counts every op (layer norms, softmax, GELU: one FLOP per element), the
    formula only matrix products, so it must be a little below XLA's total."""
    model = load_config("configs/default.py").model
    model.image.update(dict(width=256, heads=4, depth=2, pool=pool))
    model.text.update(dict(width=256, heads=4, depth=2))
    batch = 16
    ours = batch * (forward_flops_per_example(model, batch) - 2 * batch * model.embed_dim)
    xla = xla_forward_flops(model, batch)
    assert 0.93 * xla < ours < xla, (ours, xla)


def test_vit_b16_image_tower_matches_published_count():
    """ViT-B/16 at 224 px: 17.6 GMACs (timm / fvcore), i.e. 35.2 GFLOPs."""
    model = load_config("configs/clip/vit_b16.py").model
    assert image_tower_flops(model.image, model.embed_dim) == pytest.approx(2 * 17.58e9, rel=5e-3)


def test_train_step_is_three_forward_passes():
    model = load_config("configs/clip/vit_b32.py").model
    assert train_flops_per_example(model, 256) == 3 * forward_flops_per_example(model, 256)


def test_peaks():
    class FakeGpu:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    assert device_peak(FakeGpu(), "bfloat16").flops_per_s == 989e12
    FakeGpu.device_kind = "Mystery Accelerator"
    with pytest.raises(RuntimeError, match="Mystery Accelerator"):
        device_peak(FakeGpu(), "bfloat16")
    peak = cpu_peak(cores=2)
    assert peak.flops_per_s > 1e9 and "estimate" in peak.source

"""Scanned (and rematerialised) blocks compute exactly what unrolled blocks do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from clipjax.config import apply_overrides, load_config
from clipjax.models import build_model


def tiny(scan: bool, remat: str = "none"):
    config = load_config("configs/default.py:tiny")
    apply_overrides(
        config,
        [
            f"model.scan_layers={scan}",
            f"model.remat={remat}",
            "model.image.depth=3",
            "model.text.depth=2",
        ],
    )
    return config


def stacked_like(unrolled: dict, scanned: dict) -> dict:
    """The unrolled model's parameters rearranged into the scanned model's layout."""
    out = jax.tree.map(lambda x: x, unrolled)
    for tower in ("image", "text"):
        blocks = unrolled[tower]["encoder"]["blocks"]
        layers = [blocks[i] for i in sorted(blocks)]
        out[tower]["encoder"]["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), out, scanned)
    return out


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scanned_model_matches_unrolled_outputs_and_gradients(remat):
    with nnx.use_eager_sharding(False):
        plain = build_model(tiny(False).model, nnx.Rngs(0))
        scanned = build_model(tiny(True, remat).model, nnx.Rngs(0))
    graph_p, params_p = nnx.split(plain)
    graph_s, params_s = nnx.split(scanned)
    params_p, params_s = nnx.to_pure_dict(params_p), nnx.to_pure_dict(params_s)
    params_s = stacked_like(params_p, params_s)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    tokens = np.concatenate([rng.integers(1, 250, (4, 31)), np.full((4, 1), 258)], 1)

    def loss(graph, params):
        image, text = nnx.merge(graph, params)(images, tokens)
        return jnp.sum(image @ text.T * jnp.arange(4.0))

    value_p, grads_p = jax.value_and_grad(lambda p: loss(graph_p, p))(params_p)
    value_s, grads_s = jax.jit(jax.value_and_grad(lambda p: loss(graph_s, p)))(params_s)
    np.testing.assert_allclose(value_s, value_p, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        grads_s,
        stacked_like(grads_p, grads_s),
    )


def test_stacked_parameters_carry_the_layers_axis():
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: build_model(tiny(True).model, nnx.Rngs(0)))
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(model)))
    fc1 = specs["image"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]
    assert fc1 == P("layers", "embed", "mlp")

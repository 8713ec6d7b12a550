"""The cross-device softmax loss equals the single-device full-batch loss, with gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.losses import contrastive_loss
from clipjax.parallel import build_mesh


def reference_loss(image, text, log_scale):
    logits = jnp.exp(log_scale) * image @ text.T
    labels = jnp.arange(image.shape[0])
    i2t = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[labels, labels])
    t2i = -jnp.mean(jax.nn.log_softmax(logits.T, axis=1)[labels, labels])
    return (i2t + t2i) / 2


def embeddings(batch=32, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    image, text = rng.normal(size=(2, batch, dim)).astype(np.float32)
    text = text + 0.5 * image  # correlated pairs: a loss far from log(batch)
    normalise = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    return normalise(image), normalise(text), np.float32(np.log(1 / 0.07))


@pytest.mark.parametrize(
    ("mesh_shape", "batch_axes"),
    [
        ({"data": 8, "fsdp": 1, "tensor": 1}, ("data", "fsdp")),
        ({"data": 2, "fsdp": 4, "tensor": 1}, ("data", "fsdp")),
        ({"data": 2, "fsdp": 2, "tensor": 2}, ("data", "fsdp")),
        ({"data": 4, "fsdp": 1, "tensor": 2}, "data"),
        ({"data": 1, "fsdp": 1, "tensor": 1}, ("data", "fsdp")),
    ],
)
def test_gather_matches_reference_values_and_gradients(mesh_shape, batch_axes):
    devices = jax.devices()[: int(np.prod(list(mesh_shape.values())))]
    mesh = build_mesh(mesh_shape, devices)
    image, text, log_scale = embeddings()

    def sharded(fn_inputs):
        i, t, s = fn_inputs
        loss, _ = contrastive_loss(i, t, s, mesh=mesh, batch_axes=batch_axes)
        return loss

    placement = NamedSharding(mesh, P(batch_axes, None))
    inputs = (
        jax.device_put(image, placement),
        jax.device_put(text, placement),
        jax.device_put(log_scale, NamedSharding(mesh, P())),
    )
    loss, grads = jax.jit(jax.value_and_grad(sharded))(inputs)
    ref_loss, ref_grads = jax.value_and_grad(lambda x: reference_loss(*x))((image, text, log_scale))

    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert float(ref_loss) < 0.9 * np.log(32)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_metrics_report_temperature_and_positive_similarity():
    mesh = build_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    image, text, log_scale = embeddings()
    _, metrics = jax.jit(lambda i, t, s: contrastive_loss(i, t, s, mesh=mesh, batch_axes="data"))(
        image, text, log_scale
    )
    np.testing.assert_allclose(metrics["temperature"], 0.07, rtol=1e-6)
    np.testing.assert_allclose(
        metrics["positive_similarity"], np.mean(np.sum(image * text, 1)), rtol=1e-5
    )

"""Every loss kind and strategy equals a single-device full-batch reference, with gradients
w.r.t. both embeddings, the scale and the bias, on several 8-device meshes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.losses import LossSpec, contrastive_loss
from clipjax.parallel import build_mesh

BATCH, DIM = 32, 16
MESHES = {
    "data=8": {"data": 8, "fsdp": 1, "tensor": 1},
    "data=4 fsdp=2": {"data": 4, "fsdp": 2, "tensor": 1},
    "data=2 fsdp=2 tensor=2": {"data": 2, "fsdp": 2, "tensor": 2},
}
KINDS = {
    "softmax": LossSpec(kind="softmax"),
    "align": LossSpec(kind="softmax", label_smoothing=0.1),
    "dcl": LossSpec(kind="dcl"),
    "sigmoid": LossSpec(kind="sigmoid"),
}
STRATEGIES = [("gather", 8), ("ring", 8), *(("grouped", g) for g in (1, 2, 4, 8))]


def _lse_rows(z):
    return jax.nn.logsumexp(z, axis=1)


def reference_group_loss(x, y, log_scale, bias, spec: LossSpec):
    """The loss of one group computed plainly on one device."""
    s = jnp.exp(log_scale)
    z = s * x @ y.T
    n = x.shape[0]
    diag = jnp.diag(z)
    if spec.kind == "sigmoid":
        labels = 2 * jnp.eye(n) - 1
        loss = -jnp.sum(jax.nn.log_sigmoid(labels * (z + bias))) / n
    else:
        if spec.kind == "dcl":
            off = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, z)
            i2t, t2i = _lse_rows(off) - diag, _lse_rows(off.T) - diag
        else:
            eps = spec.label_smoothing
            targets = (1 - eps) * jnp.eye(n) + eps / n
            i2t = -jnp.sum(targets * jax.nn.log_softmax(z, axis=1), axis=1)
            t2i = -jnp.sum(targets * jax.nn.log_softmax(z.T, axis=1), axis=1)
        loss = (jnp.mean(i2t) + jnp.mean(t2i)) / 2
    sq = lambda a, b: jnp.sum((a[:, None] - b[None]) ** 2, -1)
    off_diag = ~jnp.eye(n, dtype=bool)

    def unif(a, b):
        return jnp.log(jnp.sum(jnp.where(off_diag, jnp.exp(-2 * sq(a, b)), 0)) / (n * (n - 1)))

    loss += spec.alignment_weight * jnp.mean(jnp.sum((x - y) ** 2, -1))
    loss += spec.uniformity_weight * (unif(x, x) + unif(y, y)) / 2
    loss += spec.cross_uniformity_weight * unif(x, y)
    return loss


def reference_loss(x, y, log_scale, bias, spec, group_rows):
    groups = x.shape[0] // group_rows
    parts = [
        reference_group_loss(
            x[g * group_rows : (g + 1) * group_rows],
            y[g * group_rows : (g + 1) * group_rows],
            log_scale,
            bias,
            spec,
        )
        for g in range(groups)
    ]
    return sum(parts) / groups


def embeddings(seed=0):
    rng = np.random.default_rng(seed)
    image, text = rng.normal(size=(2, BATCH, DIM)).astype(np.float32)
    text = text + 0.7 * image
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    return norm(image), norm(text), np.float32(np.log(1 / 0.07)), np.float32(-2.0)


def sharded_loss_and_grads(mesh_shape, spec, metrics=False):
    mesh = build_mesh(mesh_shape)
    image, text, log_scale, bias = embeddings()
    rows = NamedSharding(mesh, P(("data", "fsdp"), None))
    scalar = NamedSharding(mesh, P())

    def loss(args):
        return contrastive_loss(
            *args, mesh=mesh, batch_axes=("data", "fsdp"), spec=spec, metrics=metrics
        )

    args = (
        jax.device_put(image, rows),
        jax.device_put(text, rows),
        jax.device_put(log_scale, scalar),
        jax.device_put(bias, scalar),
    )
    (value, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(args)
    return value, aux, grads


CASES = [
    pytest.param(mesh, kind, strategy, group, id=f"{mesh}-{kind}-{strategy}{group}")
    for mesh, kind, (strategy, group) in itertools.product(MESHES, KINDS, STRATEGIES)
]


@pytest.mark.parametrize(("mesh", "kind", "strategy", "group"), CASES)
def test_loss_and_gradients_equal_reference(mesh, kind, strategy, group):
    spec = LossSpec(**{**KINDS[kind].__dict__, "strategy": strategy, "group_size": group})
    shards = MESHES[mesh]["data"] * MESHES[mesh]["fsdp"]  # the batch axes
    if strategy == "grouped" and group > shards:
        with pytest.raises(ValueError, match=f"group_size={group} must divide the {shards} batch"):
            sharded_loss_and_grads(MESHES[mesh], spec)
        return
    value, _, grads = sharded_loss_and_grads(MESHES[mesh], spec)
    image, text, log_scale, bias = embeddings()
    group_rows = BATCH * group // shards if strategy == "grouped" else BATCH
    ref_value, ref_grads = jax.value_and_grad(lambda a: reference_loss(*a, spec, group_rows))(
        (image, text, log_scale, bias)
    )
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    names = ("image", "text", "log_scale", "bias")
    for name, got, want in zip(names, grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6, err_msg=name)
    if kind != "sigmoid":
        assert float(jnp.abs(grads[3])) == 0.0


def unit(a):
    return a / jnp.linalg.norm(a, axis=1, keepdims=True)


@pytest.mark.parametrize("strategy", ["gather", "ring", "grouped"])
def test_geometry_terms_in_the_loss_equal_reference(strategy):
    """The terms use |a - b|^2 = 2 - 2 a.b, true on the unit sphere, so both sides
    differentiate through the normalisation the model applies."""
    spec = LossSpec(
        kind="softmax",
        strategy=strategy,
        group_size=4,
        alignment_weight=0.5,
        uniformity_weight=0.3,
        cross_uniformity_weight=0.2,
    )
    mesh = build_mesh(MESHES["data=4 fsdp=2"])
    image, text, log_scale, bias = embeddings()
    raw_image, raw_text = 1.5 * image, 0.5 * text + 0.01

    def sharded(args):
        u, v, s, b = args
        return contrastive_loss(
            unit(u), unit(v), s, b, mesh=mesh, batch_axes=("data", "fsdp"), spec=spec, metrics=False
        )[0]

    rows = NamedSharding(mesh, P(("data", "fsdp"), None))
    args = (jax.device_put(raw_image, rows), jax.device_put(raw_text, rows), log_scale, bias)
    value, grads = jax.jit(jax.value_and_grad(sharded))(args)
    group_rows = 16 if strategy == "grouped" else BATCH
    ref_value, ref_grads = jax.value_and_grad(
        lambda a: reference_loss(unit(a[0]), unit(a[1]), a[2], a[3], spec, group_rows)
    )((raw_image, raw_text, log_scale, bias))
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["gather", "ring"])
def test_geometry_metrics(strategy):
    spec = LossSpec(kind="sigmoid", strategy=strategy)
    _, metrics, _ = sharded_loss_and_grads(MESHES["data=8"], spec, metrics=True)
    image, text, _, bias = embeddings()
    sims = image @ text.T
    off = ~np.eye(BATCH, dtype=bool)
    np.testing.assert_allclose(metrics["temperature"], 0.07, rtol=1e-5)
    np.testing.assert_allclose(metrics["bias"], bias)
    np.testing.assert_allclose(metrics["positive_similarity"], np.mean(np.diag(sims)), rtol=1e-5)
    np.testing.assert_allclose(
        metrics["negative_similarity"], np.mean(sims[off]), rtol=1e-4, atol=1e-6
    )
    gap = np.linalg.norm(image.mean(0) - text.mean(0))
    np.testing.assert_allclose(metrics["modality_gap"], gap, rtol=1e-5)
    # Not in the loss, so logged as the mean over devices of each one's local value.
    local = []
    for rows in np.split(image, 8):
        sq = np.sum((rows[:, None] - rows[None]) ** 2, -1)
        local.append(np.log(np.mean(np.exp(-2 * sq[~np.eye(len(rows), dtype=bool)]))))
    np.testing.assert_allclose(metrics["uniformity_image"], np.mean(local), rtol=1e-5)
    np.testing.assert_allclose(
        metrics["alignment"], np.mean(np.sum((image - text) ** 2, -1)), rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["softmax", "dcl", "sigmoid"])
@pytest.mark.parametrize("chunk", [1, 3])
def test_ring_in_column_chunks_equals_reference(kind, chunk):
    """4 rows per device scored 1 column at a time, or 2 (the largest divisor <= 3)."""
    spec = LossSpec(kind=kind, strategy="ring", ring_chunk=chunk)
    value, _, grads = sharded_loss_and_grads(MESHES["data=8"], spec)
    image, text, log_scale, bias = embeddings()
    ref_value, ref_grads = jax.value_and_grad(lambda a: reference_loss(*a, spec, BATCH))(
        (image, text, log_scale, bias)
    )
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_one_row_per_device_logs_only_finite_metrics():
    mesh = build_mesh(MESHES["data=8"])
    image, text, log_scale, _ = embeddings()
    rows = NamedSharding(mesh, P("data", None))
    fn = jax.jit(lambda i, t: contrastive_loss(i, t, log_scale, mesh=mesh, batch_axes="data"))
    loss, metrics = fn(jax.device_put(image[:8], rows), jax.device_put(text[:8], rows))
    assert np.isfinite(loss)
    assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
    assert "uniformity_image" not in metrics and "alignment" in metrics


@pytest.mark.parametrize("exclude_diag", [False, True])
def test_ring_lse_gives_both_directions_and_their_separate_gradients(exclude_diag):
    """One ring pass yields each row's and each column's log-sum-exp; with different
    weights on the two outputs, the gradients still equal the plain reference's."""
    from clipjax.losses.ring import ring_lse

    mesh = build_mesh(MESHES["data=8"])
    image, text, log_scale, _ = embeddings()
    rng = np.random.default_rng(7)
    row_w, col_w = (jnp.asarray(rng.normal(size=BATCH), jnp.float32) for _ in range(2))
    rows = P("data")

    def per_device(x, y, s, rw, cw):
        s = jax.lax.pcast(s, "data", to="varying")
        row_lse, col_lse = ring_lse(x, y, s, exclude_diag, ("data",), 8, 3)
        return jnp.sum(rw * row_lse)[None] + jnp.sum(cw * col_lse)[None]

    def ring(x, y, s):
        specs = (rows, rows, P(), rows, rows)
        parts = jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=rows)
        return jnp.sum(parts(x, y, s, row_w, col_w))

    def reference(x, y, s):
        z = s * x @ y.T
        if exclude_diag:
            z = jnp.where(jnp.eye(BATCH, dtype=bool), -jnp.inf, z)
        return jnp.sum(row_w * _lse_rows(z)) + jnp.sum(col_w * _lse_rows(z.T))

    args = (image, text, jnp.exp(log_scale))
    value, grads = jax.jit(jax.value_and_grad(ring, argnums=(0, 1, 2)))(*args)
    ref_value, ref_grads = jax.value_and_grad(reference, argnums=(0, 1, 2))(*args)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)

"""Contrastive batches of millions: the whole train step traces and lowers at global batch
4,194,304 on 8 devices for every family, loss kind and strategy (abstract inputs, nothing
compiled or allocated), and the loss runs with its metrics at 65,536, where a pair count
first passes int32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.config import apply_overrides, load_config
from clipjax.losses import LossSpec, contrastive_loss
from clipjax.parallel import build_mesh
from clipjax.train.program import build_step_program
from clipjax.validation import validate

HUGE = 4_194_304
TWO_TOWER = {
    "clip": "configs/clip/tiny.py",
    "siglip": "configs/siglip/vit_b16.py:tiny",
    "align": "configs/align/efficientnet_b3.py:tiny",
    "lit": "configs/lit/vit_b16.py:tiny",
    "coca": "configs/coca/base.py:tiny",
    "isogclr": "configs/clip/isogclr.py:tiny",
}
STRATEGIES = ("gather", "grouped", "ring")
CASES = [
    *((f"clip {kind} {s}", "clip", [f"loss.kind={kind!r}", f"loss.strategy={s!r}"])
      for kind in ("softmax", "dcl") for s in STRATEGIES),
    *((f"{family} {s}", family, [f"loss.strategy={s!r}"])
      for family in ("siglip", "align", "lit", "coca") for s in STRATEGIES),
    ("clip ring, geometry terms in the loss", "clip",
     ["loss.strategy='ring'", "loss.uniformity_weight=0.1", "loss.alignment_weight=0.1",
      "loss.cross_uniformity_weight=0.1"]),
    ("clip ring, 32 accumulation steps", "clip",
     ["loss.strategy='ring'", "train.accum_steps=32"]),
    ("siglip grouped, 8 accumulation steps", "siglip",
     ["loss.strategy='grouped'", "loss.group_size=2", "train.accum_steps=8"]),
    *((f"lit cwcl {s}", "lit", ["loss.kind='cwcl'", "loss.cwcl_weights_from='image'",
                                f"loss.strategy={s!r}"]) for s in ("gather", "ring")),
    *((f"isogclr {s}", "isogclr", [f"loss.strategy={s!r}"]) for s in ("gather", "ring")),
    ("symile", "symile", []),
    ("symile pairwise", "symile", ["loss.kind='pairwise'", "loss.symile_negatives=''"]),
]  # fmt: skip


def huge_config(family: str, overrides: list[str], tmp_path):
    path = TWO_TOWER.get(family, "configs/symile/xor.py:tiny")
    config = load_config(path)
    apply_overrides(
        config,
        [f"train.batch_size={HUGE}", "mesh.data=4", "mesh.fsdp=2", "mesh.tensor=1", *overrides],
    )
    with config.unlocked():
        config.evals = {}
        if family == "lit":  # the locked tower's checkpoint is read at init, not here
            config.init_from = str(tmp_path)
    if "loss.strategy='grouped'" in overrides and "loss.group_size=2" not in overrides:
        config.loss.group_size = 4
    return config


@pytest.mark.parametrize(("name", "family", "overrides"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_train_step_lowers_at_global_batch_4m(name, family, overrides, tmp_path):
    config = huge_config(family, overrides, tmp_path)
    validate(config, 8)
    program = build_step_program(config, build_mesh(config.mesh))
    text = program.lower().as_text()
    assert f"{HUGE}x" in text or f"{HUGE // 8}x" in text  # the batch really is that large
    _, metrics_shape = jax.eval_shape(program.step, program.plan.abstract, program.abstract_batch())
    assert "loss" in metrics_shape


def test_loss_with_metrics_at_global_batch_65536_is_finite_and_exact():
    """`ring` with every metric on: the negative-pair count 65,536 x 65,535 passed int32
    and crashed at trace time. Metrics are checked against float64 closed forms."""
    batch, dim = 65_536, 8
    mesh = build_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    rng = np.random.default_rng(0)
    x, y = (rng.normal(size=(batch, dim)) for _ in range(2))
    y = x + 0.5 * y  # correlated pairs: positives differ from negatives
    x, y = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, y))
    rows = NamedSharding(mesh, P("data", None))

    @jax.jit
    def run(a, b):
        return contrastive_loss(
            a, b, jnp.log(10.0), mesh=mesh, batch_axes="data", spec=LossSpec(strategy="ring")
        )

    loss, metrics = jax.device_get(
        run(*(jax.device_put(v.astype(np.float32), rows) for v in (x, y)))
    )
    positive = np.sum(x * y) / batch
    negative = (x.sum(0) @ y.sum(0) - np.sum(x * y)) / (batch * (batch - 1.0))
    assert np.isfinite(loss) and 0 < loss < np.log(batch) + 10
    np.testing.assert_allclose(metrics["positive_similarity"], positive, rtol=1e-5)
    np.testing.assert_allclose(metrics["negative_similarity"], negative, atol=1e-6)
    np.testing.assert_allclose(metrics["modality_gap"], np.linalg.norm((x - y).mean(0)), rtol=1e-4)


def float64_clip_loss_and_grads(x, y, scale, rows_per_chunk=2048):
    """Symmetric InfoNCE of `[B, d]` rows and its gradients (x, y, log scale), in float64,
    chunked so the B x B scores are never held at once."""
    batch = x.shape[0]
    loss = 0.0
    gx, gy, g_log_scale = np.zeros_like(x), np.zeros_like(y), 0.0
    for rows, cols, g_rows, g_cols in ((x, y, gx, gy), (y, x, gy, gx)):
        for start in range(0, batch, rows_per_chunk):
            part = rows[start : start + rows_per_chunk]
            p = part @ cols.T  # in place from cosines to softmax weights: one B-wide buffer
            p *= scale
            top = p.max(axis=1, keepdims=True)
            p -= top
            np.exp(p, out=p)
            total = p.sum(axis=1, keepdims=True)
            p /= total
            positive = np.einsum("ij,ij->i", part, cols[start : start + len(part)])
            loss += np.sum(np.log(total[:, 0]) + top[:, 0] - scale * positive)
            weighted = p @ cols
            g_rows[start : start + len(part)] += scale * weighted
            g_cols += scale * (p.T @ part)
            g_log_scale += scale * (np.sum(weighted * part) - np.sum(positive))
    gx -= 2 * scale * y
    gy -= 2 * scale * x
    norm = 2.0 * batch
    return loss / norm, gx / norm, gy / norm, g_log_scale / norm


@pytest.mark.slow
def test_ring_loss_and_gradients_at_65536_equal_a_float64_reference():
    """fp32 ring loss at B = 65,536 (B^2 = 2^32, past int32) on 8 devices against float64
    numpy: the online log-sum-exp over 8 blocks of 8 chunks and the means over the batch stay within
    1e-6 relative for the loss and 1e-4 of each gradient's scale."""
    batch, dim, log_scale = 65_536, 4, float(np.log(30.0))
    mesh = build_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, dim))
    y = x + 0.7 * rng.normal(size=(batch, dim))
    x, y = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, y))
    rows = NamedSharding(mesh, P("data", None))

    def loss(a, b, s):
        spec = LossSpec(strategy="ring")
        return contrastive_loss(a, b, s, mesh=mesh, batch_axes="data", spec=spec, metrics=False)[0]

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(
        *(jax.device_put(v.astype(np.float32), rows) for v in (x, y)), jnp.float32(log_scale)
    )
    ref_loss, ref_gx, ref_gy, ref_gs = float64_clip_loss_and_grads(x, y, np.exp(log_scale))
    np.testing.assert_allclose(float(value), ref_loss, rtol=1e-6)
    for got, want in zip(jax.device_get(grads), (ref_gx, ref_gy, ref_gs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_float64_reference_matches_autodiff_on_a_small_batch():
    """The chunked float64 reference used above agrees with JAX autodiff of the plain loss."""
    rng = np.random.default_rng(2)
    x, y = (rng.normal(size=(512, 4)) for _ in range(2))
    x, y = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (x, y))

    def plain(a, b, log_scale):
        scores = jnp.exp(log_scale) * a @ b.T
        diag = jnp.trace(scores)
        lse = jax.nn.logsumexp(scores, axis=1).sum() + jax.nn.logsumexp(scores, axis=0).sum()
        return (lse - 2 * diag) / (2 * a.shape[0])

    value, grads = jax.value_and_grad(plain, argnums=(0, 1, 2))(x, y, jnp.log(20.0))
    ref = float64_clip_loss_and_grads(x, y, 20.0, rows_per_chunk=100)
    np.testing.assert_allclose(value, ref[0], rtol=1e-5)
    for got, want in zip(grads, ref[1:], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

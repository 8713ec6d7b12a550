"""`model.attention`: the Pallas flash kernel (run by Pallas's TPU interpreter on CPU)
equals XLA's attention in values and gradients, alone and inside a sharded train step,
and each choice resolves per platform or is refused there."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.config import apply_overrides, load_config
from clipjax.losses import LossSpec
from clipjax.models.attention import attend, padded_length, resolve_attention
from clipjax.models.coca import cls_mask
from clipjax.models.spec import model_spec
from clipjax.parallel import build_mesh, rules_table
from clipjax.train.objective import ObjectiveSpec, make_objective
from clipjax.train.optim import build_optimizer
from clipjax.train.state import create_train_state
from clipjax.train.step import make_grad_fn


def _qkv(batch, q_len, k_len, heads=2, head_dim=16):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim))
    k = jax.random.normal(keys[1], (batch, k_len, heads, head_dim))
    v = jax.random.normal(keys[2], (batch, k_len, heads, head_dim))
    return q, k, v


def _values_and_grads(implementation, q, k, v, mask, causal):
    def loss(q, k, v):  # a non-linear read-out, so every output element has its own cotangent
        out = attend(q, k, v, mask=mask, causal=causal, implementation=implementation)
        return jnp.sum(jnp.sin(out)), out

    # jitted: one executable instead of eager per-op dispatch, under which one CI run hung
    # with every thread idle (not reproduced since; the jitted form has not hung here)
    value_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
    (_, out), grads = value_and_grads(q, k, v)
    return out, grads


KEY_PADDING = (jnp.arange(17)[None] < jnp.array([[9], [17]]))[:, None, None, :]
TOKENS = jnp.array([[5, 6, 7] + [0] * 13, [5] * 16])  # with the CLS appended: 17


@pytest.mark.parametrize(
    ("q_len", "k_len", "mask", "causal"),
    [
        (17, 17, None, False),  # ViT-like: padded to 24 queries, 128 keys
        (17, 17, None, True),  # causal text
        (17, 17, KEY_PADDING, False),  # bidirectional text ignoring padding
        (17, 17, cls_mask(TOKENS, 0), True),  # CoCa's CLS row: any mask, as a bias
        (5, 33, None, False),  # cross-attention (attentional poolers, CoCa's decoder)
        (520, 520, None, True),  # past one block: 128-token blocks
    ],
    ids=["plain", "causal", "key-padding", "coca-cls-mask", "cross", "multi-block"],
)
@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_flash_equals_xla_in_values_and_gradients(q_len, k_len, mask, causal):
    heads, head_dim = (1, 8) if q_len > 500 else (2, 16)
    q, k, v = _qkv(2, q_len, k_len, heads, head_dim)
    with pltpu.force_tpu_interpret_mode():
        out, grads = _values_and_grads("flash", q, k, v, mask, causal)
    out_ref, grads_ref = _values_and_grads("xla", q, k, v, mask, causal)
    np.testing.assert_allclose(out, out_ref, atol=2e-6)
    for got, want in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(got, want, atol=5e-6)
    assert np.abs(np.asarray(grads_ref[0])).max() > 1e-2  # the gradients are not all ~0


def test_kernel_lengths():
    assert [padded_length(n, keys=False) for n in (5, 17, 197, 512, 520)] == [8, 24, 200, 512, 640]
    assert [padded_length(n, keys=True) for n in (5, 77, 197, 257)] == [128, 128, 256, 384]


@pytest.mark.parametrize(
    ("choice", "platform", "dtype", "resolved"),
    [
        ("auto", "tpu", "float32", "flash"),
        ("auto", "gpu", "bfloat16", "xla"),  # cuDNN only when asked: it needs the library
        ("auto", "gpu", "float32", "xla"),
        ("auto", "cpu", "bfloat16", "xla"),
        ("xla", "tpu", "bfloat16", "xla"),
        ("flash", "tpu", "bfloat16", "flash"),
        ("cudnn", "cuda", "bfloat16", "cudnn"),
    ],
)
def test_auto_picks_per_backend(choice, platform, dtype, resolved):
    assert resolve_attention(choice, platform, dtype) == resolved


@pytest.mark.parametrize(
    ("choice", "platform", "dtype", "message"),
    [
        ("flash", "cpu", "float32", "'flash' is a TPU kernel; these devices are 'cpu'"),
        ("cudnn", "gpu", "float32", "needs GPUs and model.dtype in"),
        ("cudnn", "tpu", "bfloat16", "got 'tpu' devices"),
        ("pallas", "tpu", "float32", "is not one of"),
    ],
)
def test_a_choice_the_devices_cannot_run_is_refused(choice, platform, dtype, message):
    with pytest.raises(ValueError, match=message):
        resolve_attention(choice, platform, dtype)


def _step_gradients(config, platform: str):
    mesh = build_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
    axes = ("data", "fsdp")
    rules = rules_table(config.sharding_rules)
    on_cpu = config.model.copy_and_resolve_references()
    on_cpu.attention = "xla"  # the parameters do not depend on the kernel
    _, state, _ = create_train_state(on_cpu, 0, build_optimizer(config.optim, 10), mesh, rules)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
        "text": rng.integers(1, 250, size=(4, 32)).astype(np.int32),
    }
    batch["text"][:, 20:] = 0  # padding that the bidirectional text tower masks out
    batch["text"][:, 19] = 258
    placed = {k: jax.device_put(v, NamedSharding(mesh, P(axes))) for k, v in batch.items()}
    objective = make_objective(ObjectiveSpec(), LossSpec(), mesh, axes)
    spec = model_spec(config.model, platform)
    grad_fn = make_grad_fn(spec, objective, mesh, axes, heads_axes=rules.get("heads"))
    return jax.device_get(jax.jit(grad_fn)(state.params, placed, jax.random.key(3)))


def test_a_train_step_with_flash_equals_xla_on_a_data_x_tensor_mesh():
    """One kernel per device on its rows and heads (shard_map over data x tensor)."""
    config = load_config("configs/default.py:tiny")
    apply_overrides(  # one block a tower: Pallas's TPU interpreter is slow
        config,
        [
            *("model.text.causal=False", "model.text.pool='last'"),
            *("model.image.depth=1", "model.text.depth=1"),
        ],
    )
    config.model.attention = "flash"
    with pltpu.force_tpu_interpret_mode():
        loss, _, grads = _step_gradients(config, "tpu")
    config.model.attention = "xla"
    loss_ref, _, grads_ref = _step_gradients(config, "cpu")
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, grads_ref
    )


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
@pytest.mark.parametrize("causal", [False, True])
def test_cudnn_equals_xla_on_a_gpu(causal):
    """Runs only where a GPU is present (this project's CI has none)."""
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(2, 64, 64, 2, 64))
    out, grads = _values_and_grads("cudnn", q, k, v, None, causal)
    out_ref, grads_ref = _values_and_grads("xla", q, k, v, None, causal)
    np.testing.assert_allclose(np.float32(out), np.float32(out_ref), atol=2e-2)
    for got, want in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(np.float32(got), np.float32(want), atol=5e-2)

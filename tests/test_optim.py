import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from clipjax.train.optim import build_optimizer, decay_mask, learning_rate_schedule
from clipjax.train.step import clamp_log_scale


def optim_config(**overrides):
    base = dict(
        name="adamw",
        lr=1.0,
        b1=0.9,
        b2=0.98,
        eps=1e-6,
        weight_decay=0.1,
        clip_norm=1.0,
        schedule="cosine",
        warmup_steps=10,
        cooldown_steps=0,
        end_lr_factor=0.0,
    )
    return ConfigDict({**base, **overrides})


def test_warmup_then_cosine():
    schedule = learning_rate_schedule(optim_config(), total_steps=110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(schedule(5), 0.5)
    np.testing.assert_allclose(schedule(10), 1.0)
    np.testing.assert_allclose(schedule(60), 0.5, atol=1e-6)
    np.testing.assert_allclose(schedule(110), 0.0, atol=1e-6)


def test_rsqrt_and_constant_with_cooldown():
    rsqrt = learning_rate_schedule(optim_config(schedule="rsqrt"), total_steps=100)
    np.testing.assert_allclose(rsqrt(10), 1.0)
    np.testing.assert_allclose(rsqrt(30), 1.0 / np.sqrt(30 / 10 + 0), rtol=0.2)
    np.testing.assert_allclose(rsqrt(30), jax.lax.rsqrt(3.0), rtol=1e-6)
    cool = learning_rate_schedule(
        optim_config(schedule="constant_cooldown", cooldown_steps=20), total_steps=100
    )
    np.testing.assert_allclose(cool(50), 1.0)
    np.testing.assert_allclose(cool(80), 1.0)
    np.testing.assert_allclose(cool(90), 0.5)
    np.testing.assert_allclose(cool(100), 0.0, atol=1e-6)


PARAMS = {
    "image": {
        "pos_embed": jnp.ones((4, 2)),
        "cls_token": jnp.ones((2,)),
        "mlp": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))},
        "ln": {"scale": jnp.ones((2,)), "bias": jnp.ones((2,))},
    },
    "text": {"token_embed": {"embedding": jnp.ones((5, 2))}},
    "logit_scale": jnp.ones(()),
}


def test_weight_decay_mask_skips_biases_norms_positions_and_temperature():
    mask = decay_mask(PARAMS)
    assert mask["image"]["mlp"]["kernel"] and mask["text"]["token_embed"]["embedding"]
    assert not any(
        [
            mask["image"]["pos_embed"],
            mask["image"]["cls_token"],
            mask["image"]["mlp"]["bias"],
            mask["image"]["ln"]["scale"],
            mask["logit_scale"],
        ]
    )


@pytest.mark.parametrize("name", ["adamw", "lion", "adafactor", "lamb"])
def test_zero_gradient_step_only_decays_masked_matrices(name):
    tx = build_optimizer(optim_config(name=name, warmup_steps=0, weight_decay=0.5), 10)
    state = tx.init(PARAMS)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, state, PARAMS)
    assert float(jnp.abs(updates["image"]["mlp"]["kernel"]).max()) > 0
    for leaf in (
        updates["image"]["pos_embed"],
        updates["image"]["mlp"]["bias"],
        updates["logit_scale"],
    ):
        assert float(jnp.abs(leaf).max()) == 0.0


def test_gradient_clipping_bounds_the_update_norm():
    tx = build_optimizer(
        optim_config(name="lion", warmup_steps=0, weight_decay=0.0, clip_norm=1e-3), 10
    )
    grads = {"w": jnp.full((3,), 100.0)}
    clipped, _ = tx.update(grads, tx.init(grads), grads)
    assert clipped["w"].shape == (3,)
    chain_clip = optax.clip_by_global_norm(1e-3)
    out, _ = chain_clip.update(grads, chain_clip.init(grads))
    np.testing.assert_allclose(optax.tree.norm(out), 1e-3, rtol=1e-5)


def test_log_scale_is_clamped_to_ln_100():
    params = clamp_log_scale({"logit_scale": jnp.float32(7.0), "w": jnp.ones(2)})
    np.testing.assert_allclose(params["logit_scale"], np.log(100.0), rtol=1e-6)
    assert float(clamp_log_scale({"logit_scale": jnp.float32(-1.0)})["logit_scale"]) == 0.0


def test_adafactor_b1_is_its_momentum():
    """`optim.b1` takes effect under Adafactor (its momentum); None keeps none."""
    params = {"w": jnp.ones((4, 3))}
    grads = [{"w": jnp.full((4, 3), g)} for g in (1.0, -1.0)]

    def second_update(b1):
        cfg = optim_config(name="adafactor", b1=b1, weight_decay=0.0, clip_norm=0.0)
        tx = build_optimizer(cfg, total_steps=100)
        state = tx.init(params)
        for g in grads:
            updates, state = tx.update(g, state, params)
        return np.asarray(updates["w"]), state

    plain, plain_state = second_update(None)
    with_momentum, momentum_state = second_update(0.9)
    traces = lambda s: [x for x in jax.tree.leaves(s) if getattr(x, "shape", ()) == (4, 3)]
    assert len(traces(momentum_state)) == len(traces(plain_state)) + 1  # the momentum buffer
    # warmup starts at lr 0, so the first update is 0 and the momentum (an average
    # m = b1 m + (1 - b1) u) holds a tenth of the second
    np.testing.assert_allclose(with_momentum, (1 - 0.9) * plain, rtol=1e-5)
    assert np.all(plain != 0)


def test_lamb_scales_each_layers_update_to_its_weight_norm():
    """LAMB (ALIGN's optimizer): each leaf's Adam direction is rescaled by the trust
    ratio ||w|| / ||u||, so at lr 1 every update has the norm of its parameter."""
    tx = build_optimizer(
        optim_config(name="lamb", warmup_steps=0, weight_decay=0.0, clip_norm=0.0), 10
    )
    params = {"a": jnp.full((2, 3), 2.0), "b": jnp.arange(4.0).reshape(2, 2)}
    grads = {"a": jnp.array([[1.0, -3.0, 0.5], [2.0, 0.1, -1.0]]), "b": jnp.ones((2, 2))}
    updates, _ = tx.update(grads, tx.init(params), params)
    for name in params:
        np.testing.assert_allclose(
            optax.tree.norm(updates[name]), optax.tree.norm(params[name]), rtol=1e-5
        )

"""iSogCLR: the loss, the gradients and the per-example updates equal a float64 numpy
implementation of the paper's Algorithm 1 on 8 devices (gather and ring)."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.losses.isogclr import EXAMPLE_FIELDS, LOG_ZERO, ISogCLRSpec, isogclr_loss
from clipjax.parallel import build_mesh

BATCH, DIM = 16, 8


def reference_step(x, t, state, spec: ISogCLRSpec):
    """One iteration of Algorithm 1 in float64, written from the equations: (objective,
    d surrogate / d x, d surrogate / d t, new state)."""
    n = len(x)
    scores = x @ t.T
    positive = np.diag(scores)
    grad_x, grad_t = np.zeros_like(x), np.zeros_like(t)
    objective, new = 0.0, {}
    off = ~np.eye(n, dtype=bool)
    for side in ("image", "text"):
        tau = state[f"tau_{side}"]
        h = (scores if side == "image" else scores.T) - positive[:, None]
        e = np.where(off, np.exp(h / tau[:, None]), 0.0)
        g = e.sum(1) / (n - 1)
        old_u = np.where(state[f"log_u_{side}"] <= LOG_ZERO, 0.0, np.exp(state[f"log_u_{side}"]))
        u = (1 - spec.gamma) * old_u + spec.gamma * g
        objective += np.mean(tau * (np.log(spec.eps + g) + spec.rho))
        w = e / (spec.eps + u)[:, None] / (n - 1) / n  # d surrogate / d h_ij
        anchors, others = (x, t) if side == "image" else (t, x)
        g_anchor = w @ others - w.sum(1)[:, None] * others  # h_ij = a_i.o_j - a_i.o_i
        g_other = w.T @ anchors - (w.sum(1)[:, None] * anchors)
        if side == "image":
            grad_x += g_anchor
            grad_t += g_other
        else:
            grad_t += g_anchor
            grad_x += g_other
        p = e / e.sum(1, keepdims=True)
        mean_h = (p * h).sum(1) / tau
        grad_tau = np.log(spec.eps + u) + spec.rho - g / (spec.eps + u) * mean_h
        grad_tau = np.clip(grad_tau, -spec.tau_grad_clip, spec.tau_grad_clip)
        m = (1 - spec.tau_momentum) * state[f"tau_m_{side}"] + spec.tau_momentum * grad_tau
        new[f"tau_{side}"] = np.clip(tau - spec.tau_lr * m, spec.tau_min, spec.tau_max)
        new[f"log_u_{side}"] = np.log(u)
        new[f"tau_m_{side}"] = m
    return objective, grad_x, grad_t, new


def _unit(rng, shape):
    v = rng.normal(size=shape)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("strategy", ["gather", "ring"])
def test_three_steps_equal_the_numpy_algorithm(strategy):
    spec = ISogCLRSpec(strategy=strategy, ring_chunk=1, tau_init=0.05, tau_lr=0.01)
    mesh = build_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    axes = ("data", "fsdp")
    rows, per_row = NamedSharding(mesh, P(axes, None)), NamedSharding(mesh, P(axes))
    rng = np.random.default_rng(0)
    state = {k: np.full(BATCH, v) for k, v in spec.initial_values().items()}

    def step(x, t, examples):
        def loss(x, t):
            value, _, new = isogclr_loss(x, t, examples, mesh=mesh, batch_axes=axes, spec=spec)
            return value, new

        (value, new), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, t)
        return value, grads, new

    step = jax.jit(step)
    for _ in range(3):  # the same examples again: u and tau carry over
        x = _unit(rng, (BATCH, DIM))
        t = _unit(rng, (BATCH, DIM)) + 2 * x
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        value, (gx, gt), new = step(
            jax.device_put(x.astype(np.float32), rows),
            jax.device_put(t.astype(np.float32), rows),
            {k: jax.device_put(v.astype(np.float32), per_row) for k, v in state.items()},
        )
        want, want_gx, want_gt, want_state = reference_step(x, t, state, spec)
        np.testing.assert_allclose(value, want, rtol=2e-5)
        np.testing.assert_allclose(gx, want_gx, rtol=2e-4, atol=2e-6)
        np.testing.assert_allclose(gt, want_gt, rtol=2e-4, atol=2e-6)
        for name in EXAMPLE_FIELDS:
            np.testing.assert_allclose(
                new[name], want_state[name], rtol=2e-5, atol=1e-6, err_msg=name
            )
        state = {k: np.asarray(v, np.float64) for k, v in new.items()}
    assert np.ptp(state["tau_image"]) > 0  # the temperatures did individualise


def _train_config(tiny_config, *overrides):
    from clipjax.config import apply_overrides
    from clipjax.models.presets import apply_isogclr

    apply_overrides(
        tiny_config,
        [
            "train.log_every=1", "checkpoint.every=2", "train.batch_size=16",
            "optim.warmup_steps=1", "data.shuffle_buffer=50", *overrides,
        ],
    )  # fmt: skip
    with tiny_config.unlocked():
        apply_isogclr(tiny_config, samples_per_shard=512)  # rho for the batch of 16
        del tiny_config.evals["digits"]
    return tiny_config


def _saved_state(config, workdir, step: int, mesh_shape=None, devices=None):
    from clipjax.checkpoint import Checkpoints
    from clipjax.parallel import rules_table
    from clipjax.train.optim import build_optimizer
    from clipjax.train.program import example_table
    from clipjax.train.state import plan_train_state, state_as_dict

    mesh = build_mesh(mesh_shape or dict(config.mesh), devices or jax.devices())
    rules = rules_table(config.sharding_rules)
    table = example_table(config, mesh, rules.get("batch"))
    tx = build_optimizer(config.optim, config.train.steps)
    plan = plan_train_state(config.model, config.seed, tx, mesh, rules, table)
    checkpoints = Checkpoints(workdir / "checkpoints", every=2)
    try:
        return checkpoints.restore(step, state_as_dict(plan.abstract)).state, table
    finally:
        checkpoints.close()


def test_resume_with_the_per_example_state_equals_training_straight(
    tiny_config, tmp_path, monkeypatch
):
    from clipjax.checkpoint import flat_params
    from clipjax.train import loop
    from clipjax.train.preemption import Preempted, PreemptionWatch

    config = _train_config(tiny_config, "train.steps=6", "mesh.data=2", "mesh.fsdp=4")
    straight = loop.train(config, tmp_path / "straight")
    monkeypatch.setattr(PreemptionWatch, "reached", lambda self, s: s == 3)
    with pytest.raises(Preempted):
        loop.train(config, tmp_path / "resumed")
    monkeypatch.undo()
    resumed = loop.train(config, tmp_path / "resumed")
    assert resumed.start_step == 3
    for name, value in flat_params(straight.params).items():
        np.testing.assert_array_equal(flat_params(resumed.params)[name], value, err_msg=name)
    want, _ = _saved_state(config, tmp_path / "straight", 6)
    got, _ = _saved_state(config, tmp_path / "resumed", 6)
    for name in EXAMPLE_FIELDS:
        np.testing.assert_array_equal(got["examples"][name], want["examples"][name], err_msg=name)
    visited = np.asarray(want["examples"]["log_u_image"]) > LOG_ZERO
    assert 16 < visited.sum() <= 6 * 16  # the batches' examples, and only them
    tau = np.asarray(want["examples"]["tau_image"])
    assert np.all(tau[~visited] == np.float32(0.01)) and np.any(tau[visited] != np.float32(0.01))


def test_the_per_example_state_restores_onto_other_meshes(tiny_config, tmp_path):
    from clipjax.train import loop

    config = _train_config(tiny_config, "train.steps=2", "mesh.data=2", "mesh.fsdp=4")
    loop.train(config, tmp_path)
    saved, _ = _saved_state(config, tmp_path, 2)
    for shape, count in [((8, 1, 1), 8), ((1, 2, 1), 2), ((1, 1, 1), 1)]:
        mesh_shape = dict(zip(("data", "fsdp", "tensor"), shape, strict=True))
        state, table = _saved_state(config, tmp_path, 2, mesh_shape, jax.devices()[:count])
        for name in EXAMPLE_FIELDS:
            np.testing.assert_array_equal(state["examples"][name], saved["examples"][name])
            assert state["examples"][name].sharding == table.sharding


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train.accum_steps": 2}, "loss.kind='isogclr' needs train.accum_steps=1, got 2"),
        ({"data.samples_per_shard": None}, "set data.samples_per_shard"),
        ({"loss.isogclr.tau_min": 0.5}, r"0 < tau_min=0.5 <= tau_init=0.01"),
        ({"loss.isogclr.beta": 0.5}, r"loss.isogclr.beta is not used by iSogCLR"),
        ({"loss.isogclr": None}, "loss.kind='isogclr' needs its group"),
        ({"loss.isogclr.rho": 3.5}, r"rho=3.5 is not in \(0, ln\(B - 1\) = 3.434\) for the 32"),
    ],
)
def test_bad_isogclr_settings_are_refused(change, message):
    import re

    from clipjax.config import load_config
    from clipjax.validation import config_problems

    config = load_config("configs/clip/isogclr.py:tiny")
    with config.unlocked():
        for path, value in change.items():
            *parents, leaf = path.split(".")
            group = config
            for name in parents:
                group = group[name]
            group[leaf] = value
    problems = config_problems(config, 8, 1, reads_data=False)
    assert any(re.search(message, p) for p in problems), problems


def test_the_shipped_config_passes_its_checks():
    from clipjax.config import load_config
    from clipjax.validation import config_problems

    for spec in ("configs/clip/isogclr.py", "configs/clip/isogclr.py:tiny"):
        assert config_problems(load_config(spec), 8, 1, reads_data=False) == [], spec


def test_example_numbers_are_refused_without_a_loss_that_reads_them():
    from clipjax.config import load_config
    from clipjax.validation import config_problems

    config = load_config("configs/default.py:tiny")
    config.data.samples_per_shard = 512
    problems = config_problems(config, 8, 1, reads_data=False)
    assert any("data.samples_per_shard is not used by loss.kind='softmax'" in p for p in problems)


def test_a_checkpoint_numbered_otherwise_is_refused(tiny_config):
    from clipjax.data.loader import train_loader
    from clipjax.data.shards import DataStats
    from clipjax.data.tokenizers import build_tokenizer

    config = _train_config(tiny_config)
    saved = {"streams": 1, "states": {}, "samples_per_shard": 600}
    with pytest.raises(ValueError, match="samples_per_shard=600 and this run has 512"):
        train_loader(config, build_tokenizer(config.tokenizer), DataStats(), saved)

"""Checkpoints: exact resume, restore onto other meshes, init_from, export."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from clipjax.checkpoint import Checkpoints, flat_params, load_params, read_params
from clipjax.cli import main
from clipjax.config import apply_overrides
from clipjax.parallel import build_mesh, rules_table
from clipjax.train import loop
from clipjax.train.optim import build_optimizer
from clipjax.train.preemption import Preempted, PreemptionWatch
from clipjax.train.state import plan_train_state, state_as_dict


def _config(tiny_config, *overrides):
    apply_overrides(
        tiny_config,
        [
            "train.log_every=1",
            "checkpoint.every=2",
            "train.batch_size=16",
            "optim.warmup_steps=1",
            *overrides,
        ],
    )
    with tiny_config.unlocked():
        del tiny_config.evals["digits"]
    return tiny_config


def _rows(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _preempt_at(monkeypatch, step: int) -> None:
    monkeypatch.setattr(PreemptionWatch, "reached", lambda self, s: s == step)


def test_stop_and_resume_equals_training_straight(tiny_config, tmp_path, monkeypatch):
    config = _config(tiny_config, "train.steps=8", "data.shuffle_buffer=50")
    straight = loop.train(config, tmp_path / "straight")

    _preempt_at(monkeypatch, 3)  # not a multiple of checkpoint.every: the forced save
    with pytest.raises(Preempted) as stop:
        loop.train(config, tmp_path / "resumed")
    assert stop.value.step == 3
    monkeypatch.undo()
    resumed = loop.train(config, tmp_path / "resumed")

    assert resumed.start_step == 3 and len(resumed.losses) == 5
    for name, value in flat_params(straight.params).items():
        np.testing.assert_array_equal(flat_params(resumed.params)[name], value, err_msg=name)
    losses = [(r["step"], r["train/loss"]) for r in _rows(tmp_path / "straight")]
    assert [(r["step"], r["train/loss"]) for r in _rows(tmp_path / "resumed")] == losses


def test_checkpoint_restores_onto_other_meshes(tiny_config, tmp_path):
    config = _config(tiny_config, "train.steps=2", "mesh.data=2", "mesh.fsdp=4")
    saved = flat_params(loop.train(config, tmp_path).params)
    checkpoints = Checkpoints(tmp_path / "checkpoints", every=2)
    assert checkpoints.latest_step() == 2
    tx = build_optimizer(config.optim, config.train.steps)
    rules = rules_table(config.sharding_rules)
    for mesh_shape, count in [((4, 2, 1), 8), ((1, 2, 1), 2), ((8, 1, 1), 8), ((1, 1, 1), 1)]:
        mesh_cfg = dict(zip(("data", "fsdp", "tensor"), mesh_shape, strict=True))
        mesh = build_mesh(mesh_cfg, jax.devices()[:count])
        plan = plan_train_state(config.model, config.seed, tx, mesh, rules)
        restored = checkpoints.restore(2, state_as_dict(plan.abstract))
        params = restored.state["params"]
        for name, value in flat_params(params).items():
            np.testing.assert_array_equal(value, saved[name], err_msg=f"{mesh_shape} {name}")
        for got, want in zip(
            jax.tree.leaves(params), jax.tree.leaves(plan.shardings.params), strict=True
        ):
            assert got.sharding == want
        assert int(restored.state["step"]) == 2
        assert restored.loader["states"]["0"]["stream"]["emitted"] > 0
    checkpoints.close()
    moments = jax.tree.leaves(restored.state["opt_state"])
    assert any(leaf.shape == params["logit_scale"].shape for leaf in moments)


def test_init_from_loads_params_only_and_names_mismatches(tiny_config, tmp_path):
    source = _config(tiny_config, "train.steps=2")
    trained = flat_params(loop.train(source, tmp_path / "source").params)

    apply_overrides(source, ["train.steps=4", f"init_from={tmp_path / 'source'}"])
    tx = build_optimizer(source.optim, 4)
    mesh = build_mesh(source.mesh, jax.devices())
    plan = plan_train_state(source.model, 1, tx, mesh, rules_table(source.sharding_rules))
    fresh = Checkpoints(tmp_path / "new" / "checkpoints", every=2)
    state, loader_state, start = loop.initial_state(source, plan, fresh)
    fresh.close()
    assert start == 0 and loader_state is None and int(state.step) == 0
    for name, value in flat_params(state.params).items():
        np.testing.assert_array_equal(value, trained[name], err_msg=name)
    assert all(float(jnp_abs_sum) == 0 for jnp_abs_sum in _first_moments(state.opt_state))

    apply_overrides(source, ["model.embed_dim=32"])
    other = plan_train_state(source.model, 0, tx, mesh, rules_table(source.sharding_rules))
    with pytest.raises(ValueError, match=r"image/proj/kernel: checkpoint \(64, 64\), model"):
        load_params(tmp_path / "source", other.abstract.params)


def _first_moments(opt_state):
    return [np.abs(np.asarray(leaf)).sum() for leaf in jax.tree.leaves(opt_state) if leaf.ndim]


def test_convert_writes_safetensors_and_npz_with_config(tiny_config, tmp_path, capsys, monkeypatch):
    config = _config(tiny_config, "train.steps=2")
    trained = flat_params(loop.train(config, tmp_path / "run").params)
    assert (
        main(["convert", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "x")]) == 0
    )
    tensors = load_file(tmp_path / "x" / "params.safetensors")
    arrays = np.load(tmp_path / "x" / "params.npz")
    assert set(tensors) == set(arrays.files) == set(trained)
    for name, value in trained.items():
        np.testing.assert_array_equal(tensors[name], value)
        np.testing.assert_array_equal(arrays[name], value)
    assert json.loads((tmp_path / "x" / "config.json").read_text())["train"]["steps"] == 2
    assert read_params(tmp_path / "run")[1] == 2
    assert main(["convert", "--checkpoint", str(tmp_path / "none"), "--out", "y"]) == 2
    monkeypatch.chdir(tmp_path)  # relative paths, as typed on a command line
    assert main(["convert", "--checkpoint", "run", "--out", "rel", "--format", "npz"]) == 0
    assert (tmp_path / "rel" / "params.npz").exists()
    assert "does not exist" in capsys.readouterr().err


def _position(step: int) -> dict:
    return {"streams": 1, "states": {"0": {"position": step}}}


def test_saves_every_n_steps_and_keeps_the_last_and_the_periodic(tmp_path, monkeypatch):
    import jax.numpy as jnp

    monkeypatch.chdir(tmp_path.parent)  # a relative workdir, as `--workdir=workdir` gives
    checkpoints = Checkpoints(tmp_path.name, every=2, keep=2, keep_period=4)
    for step in range(1, 12):
        checkpoints.save(step, {"w": jnp.full((3,), float(step))}, _position(step))
    checkpoints.save(11, {"w": jnp.full((3,), 11.0)}, _position(11), force=True)
    checkpoints.close()
    assert sorted(Checkpoints(tmp_path, every=2).all_steps()) == [4, 8, 10, 11]
    restored = Checkpoints(tmp_path, every=2).restore(
        8, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
    )
    assert restored.loader == _position(8)
    np.testing.assert_array_equal(restored.state["w"], np.full(3, 8.0))

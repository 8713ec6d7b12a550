"""Train state: parameters as a pure dict, optimizer state and step, placed on the mesh."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.models import build_model
from clipjax.models.spec import ModelSpec, model_spec
from clipjax.parallel import MeshAxes, param_shardings
from clipjax.train.example_state import ExampleTable


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nested dict of arrays (nnx.to_pure_dict of the model's Params)
    opt_state: optax.OptState
    examples: Any = None  # per-example state, `{field: [N]}` (train.example_state), or None


def _new_params(model_cfg, seed: int) -> dict:
    with nnx.use_eager_sharding(False):  # placement comes from jit's out_shardings
        model = build_model(model_cfg, nnx.Rngs(seed))
    return nnx.to_pure_dict(nnx.split(model)[1])


def state_shardings(
    spec: ModelSpec,
    abstract: TrainState,
    mesh: Mesh,
    rules: dict[str, MeshAxes],
    table: ExampleTable | None = None,
) -> TrainState:
    """Shardings of every leaf: parameters by the rules, optimizer moments like
    their parameter, per-example state like a batch, everything else (counts,
    factored statistics) replicated."""
    replicated = NamedSharding(mesh, P())
    params = param_shardings(spec.logical_specs, abstract.params, mesh, rules)
    opt_state = _like_params(abstract.opt_state, params, abstract.params, replicated)
    examples = None if table is None else {name: table.sharding for name in table.initial}
    return TrainState(step=replicated, params=params, opt_state=opt_state, examples=examples)


def _path_key(path) -> tuple[str, ...]:
    return tuple(str(getattr(e, "key", getattr(e, "name", getattr(e, "idx", e)))) for e in path)


def _like_params(opt_state, shardings, abstract_params, replicated: NamedSharding):
    """An optimizer leaf whose key path ends with a parameter's path and has its shape
    (Adam's moments, also inside masked or partitioned states) is sharded like it."""
    by_path = {}
    for (path, sharding), leaf in zip(
        jax.tree_util.tree_flatten_with_path(shardings)[0],
        jax.tree.leaves(abstract_params),
        strict=True,
    ):
        by_path[_path_key(path)] = (sharding, tuple(leaf.shape))

    def one(path, leaf):
        keys = _path_key(path)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and hit[1] == tuple(leaf.shape):
                return hit[0]
        return replicated

    return jax.tree_util.tree_map_with_path(one, opt_state)


@dataclass(frozen=True)
class StatePlan:
    """Everything about the train state short of its values."""

    spec: ModelSpec
    shardings: TrainState
    abstract: TrainState  # ShapeDtypeStructs carrying `shardings`
    init: Any  # () -> TrainState, jitted straight into `shardings`


def plan_train_state(
    model_cfg,
    seed: int,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: dict[str, MeshAxes],
    table: ExampleTable | None = None,
) -> StatePlan:
    """Shapes and shardings of the state (with `table`'s per-example state), and its
    initialiser; nothing allocated."""
    spec = model_spec(model_cfg, mesh.devices.flat[0].platform)

    def init() -> TrainState:
        params = _new_params(model_cfg, seed)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            examples=None if table is None else table.init(),
        )

    abstract = jax.eval_shape(init)
    shardings = state_shardings(spec, abstract, mesh, rules, table)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return StatePlan(spec, shardings, abstract, jax.jit(init, out_shardings=shardings))


def create_train_state(
    model_cfg,
    seed: int,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: dict[str, MeshAxes],
) -> tuple[ModelSpec, TrainState, TrainState]:
    """Initialises parameters and optimizer state directly in their shardings."""
    plan = plan_train_state(model_cfg, seed, tx, mesh, rules)
    return plan.spec, plan.init(), plan.shardings


def state_as_dict(state: TrainState) -> dict:
    """The checkpointed form: plain dict keys, whatever TrainState becomes later."""
    saved = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    if state.examples is not None:
        saved["examples"] = state.examples
    return saved


def state_from_dict(saved: dict) -> TrainState:
    return TrainState(
        step=saved["step"],
        params=saved["params"],
        opt_state=saved["opt_state"],
        examples=saved.get("examples"),
    )

"""The jitted train step: forward both towers, contrastive loss, backward, update."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from clipjax.losses import contrastive_loss
from clipjax.models.two_tower import MAX_LOG_SCALE
from clipjax.parallel import MeshAxes
from clipjax.train.state import ModelSpec, TrainState


def clamp_log_scale(params: dict) -> dict:
    """CLIP clamps the learned log inverse temperature to [0, ln 100] after each update."""
    if "logit_scale" not in params:
        return params
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOG_SCALE)}


def make_loss_fn(spec: ModelSpec, loss_cfg, mesh: Mesh, batch_axes: MeshAxes) -> Callable:
    def loss_fn(params: dict, batch: dict) -> tuple[jax.Array, dict]:
        model = nnx.merge(spec.graphdef, params)
        image, text = model(batch["image"], batch["text"])
        return contrastive_loss(
            image,
            text,
            model.logit_scale[...],
            mesh=mesh,
            batch_axes=batch_axes,
            kind=loss_cfg.kind,
            strategy=loss_cfg.strategy,
        )

    return loss_fn


def make_train_step(
    spec: ModelSpec,
    loss_cfg,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    batch_axes: MeshAxes,
    state_shardings: TrainState,
    batch_shardings: dict,
    schedule: optax.Schedule,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings and
    the incoming state donated."""
    loss_fn = make_loss_fn(spec, loss_cfg, mesh, batch_axes)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = clamp_log_scale(optax.apply_updates(state.params, updates))
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state.step),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )

"""The jitted train step: forward both towers, contrastive loss, backward, update.

With `accum_steps = k > 1` the towers run on k micro-batches at a time, but the
loss still contrasts the whole batch (GradCache): embed every micro-batch
without gradients, take the loss's gradients w.r.t. the embeddings, then
recompute each micro-batch with a VJP against its slice of those gradients.
The result equals the full-batch gradient; peak activation memory is that of
one micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.losses import LossSpec, contrastive_loss
from clipjax.models.two_tower import MAX_LOG_SCALE
from clipjax.parallel import MeshAxes, axis_size
from clipjax.train.state import ModelSpec, TrainState

GradFn = Callable[[dict, dict], tuple[jax.Array, dict, dict]]


def clamp_log_scale(params: dict) -> dict:
    """CLIP clamps the learned log inverse temperature to [0, ln 100] after each update."""
    if "logit_scale" not in params:
        return params
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOG_SCALE)}


def split_micro(x: jax.Array, shards: int, k: int) -> jax.Array:
    """`[B, ...] -> [k, B/k, ...]`: micro-batch m holds the m-th slice of every batch
    shard, so each device keeps its own rows."""
    local = x.shape[0] // shards
    x = x.reshape(shards, k, local // k, *x.shape[1:]).swapaxes(0, 1)
    return x.reshape(k, shards * (local // k), *x.shape[3:])


def merge_micro(x: jax.Array, shards: int) -> jax.Array:
    """Inverse of `split_micro`: back to the original batch order."""
    k, rows = x.shape[:2]
    x = x.reshape(k, shards, rows // shards, *x.shape[2:]).swapaxes(0, 1)
    return x.reshape(k * rows, *x.shape[3:])


def make_grad_fn(
    spec: ModelSpec, loss_spec: LossSpec, mesh: Mesh, batch_axes: MeshAxes, accum_steps: int = 1
) -> GradFn:
    """`grad_fn(params, batch) -> (loss, metrics, grads)`."""

    def embed(params: dict, batch: dict):
        return nnx.merge(spec.graphdef, params)(batch["image"], batch["text"])

    def loss_of(image, text, log_scale, bias):
        return contrastive_loss(
            image, text, log_scale, bias, mesh=mesh, batch_axes=batch_axes, spec=loss_spec
        )

    def full_batch(params: dict, batch: dict):
        def loss_fn(p):
            image, text = embed(p, batch)
            return loss_of(image, text, p["logit_scale"], p.get("logit_bias"))

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, metrics, grads

    if accum_steps == 1:
        return full_batch
    shards = axis_size(mesh, batch_axes)

    def constrain(x):
        spec_ = P(None, batch_axes, *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec_))

    def accumulated(params: dict, batch: dict):
        micro = jax.tree.map(lambda x: constrain(split_micro(x, shards, accum_steps)), batch)
        frozen = jax.lax.stop_gradient(params)
        _, (images, texts) = jax.lax.scan(lambda c, mb: (c, embed(frozen, mb)), None, micro)
        image, text = merge_micro(images, shards), merge_micro(texts, shards)
        scalars = {k: params[k] for k in ("logit_scale", "logit_bias") if k in params}

        def loss_of_embeddings(image, text, scalars):
            return loss_of(image, text, scalars["logit_scale"], scalars.get("logit_bias"))

        (loss, metrics), (g_image, g_text, g_scalars) = jax.value_and_grad(
            loss_of_embeddings, argnums=(0, 1, 2), has_aux=True
        )(image, text, scalars)

        def backward(acc, xs):
            mb, gi, gt = xs
            _, vjp = jax.vjp(lambda p: embed(p, mb), params)
            return jax.tree.map(jnp.add, acc, vjp((gi, gt))[0]), None

        cotangents = (
            constrain(split_micro(g_image, shards, accum_steps)),
            constrain(split_micro(g_text, shards, accum_steps)),
        )
        grads, _ = jax.lax.scan(
            backward, jax.tree.map(jnp.zeros_like, params), (micro, *cotangents)
        )
        for name, g in g_scalars.items():
            grads[name] = grads[name] + g
        return loss, metrics, grads

    return accumulated


def pixel_normalizer(mean: Sequence[float], std: Sequence[float]) -> Callable:
    """uint8 pixels -> float32 `(x/255 - mean) / std`, inside the jitted step: the loader
    ships a quarter of the bytes and the host does no float work. Floats pass through."""
    shift = jnp.asarray(mean, jnp.float32) * 255.0
    scale = 1.0 / (jnp.asarray(std, jnp.float32) * 255.0)

    def normalize(images: jax.Array) -> jax.Array:
        if images.dtype != jnp.uint8:
            return images
        return (images.astype(jnp.float32) - shift) * scale

    return normalize


def make_train_step(
    grad_fn: GradFn,
    tx: optax.GradientTransformation,
    state_shardings: TrainState,
    batch_shardings: dict,
    schedule: optax.Schedule,
    normalize: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings and
    the incoming state donated; `normalize` turns the batch's uint8 images to floats."""

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        if normalize is not None:
            batch = {**batch, "image": normalize(batch["image"])}
        loss, metrics, grads = grad_fn(state.params, batch)
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

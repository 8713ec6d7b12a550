"""The jitted train step: forward the model, its objective, backward, update.

With `accum_steps = k > 1` the towers run on k micro-batches at a time, but the
loss still contrasts the whole batch (GradCache): embed every micro-batch
without gradients, take the loss's gradients w.r.t. the embeddings, then
recompute each micro-batch with a VJP against its slice of those gradients.
The result equals the full-batch gradient; peak activation memory is that of
one micro-batch. uint8 pixels become floats one micro-batch at a time, inside
those passes: a float32 copy of the whole batch never exists.

The `host_entries` of the batch (the images, with `train.host_batch`) arrive
already split into `split_micro`'s micro-batches on the host, each example's
bytes packed into uint32 words (`[k, B/k, H*W*C/4]`, see `StepProgram.place_batch`),
and in host memory (`pinned_host`); each pass moves one micro-batch at a time to
the chips and unpacks it there. HBM then holds one micro-batch of pixels, never
the whole batch. (Measured with libtpu 0.0.42: with uint8 arrays the TPU compiler
re-tiles the whole host array through HBM, from uint8's 32-row tiles to 8-row
ones, which costs a full copy of the batch on every chip; 32-bit words keep one
tiling.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.models.spec import ModelSpec
from clipjax.models.two_tower import MAX_LOG_SCALE
from clipjax.parallel import MeshAxes, activations_on_batch_axes, axis_size
from clipjax.train.divergence import keep_if_finite, nonfinite_flags
from clipjax.train.example_state import ExampleTable
from clipjax.train.objective import EXAMPLE_UPDATES, Objective
from clipjax.train.state import TrainState

# The model's randomness (patch masks) is fold_in(step rng, this); the loss (Symile's
# negatives) draws from the step rng itself.
MODEL_RNG_STREAM = 1

GradFn = Callable[..., tuple[jax.Array, dict, dict]]


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


def freeze(params: dict, frozen: Sequence[str]) -> dict:
    """Stops gradients into the `frozen` top-level parts (LiT's locked tower), so
    XLA drops their backward pass; the optimizer gives them zero updates."""
    return {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in params.items()}


SCALARS = ("logit_scale", "logit_bias")


def make_grad_fn(
    spec: ModelSpec,
    objective: Objective,
    mesh: Mesh,
    batch_axes: MeshAxes,
    accum_steps: int = 1,
    frozen: Sequence[str] = (),
    normalize: Callable[[jax.Array], jax.Array] | None = None,
    host_entries: Mapping[str, tuple[int, ...]] | None = None,
    heads_axes: MeshAxes = None,
) -> GradFn:
    """`grad_fn(params, batch, rng, examples=None) -> (loss, metrics, grads)`; `objective`
    scores the model's `train_outputs` (see train.objective), with the batch's
    per-example state `examples` when it keeps one; `normalize` turns the batch's uint8
    images into floats (`pixel_normalizer`), per micro-batch when accumulating;
    `host_entries` (name: uint8 example shape) arrive split, packed into uint32 words
    and in host memory (see the module docstring)."""
    host_entries = dict(host_entries or {})

    def outputs(params: dict, batch: dict, rng: jax.Array) -> dict:
        if normalize is not None and "image" in batch:
            batch = {**batch, "image": normalize(batch["image"])}
        with activations_on_batch_axes(mesh, batch_axes, heads_axes):
            model = nnx.merge(spec.graphdef, params)
            return model.train_outputs(batch, jax.random.fold_in(rng, MODEL_RNG_STREAM))

    def with_rows(batch: dict) -> dict:
        """The batch with each example's global row: per-example randomness (patch masks)
        then follows the example, not the mesh or the micro-batching."""
        size = next(x.shape[0] for name, x in batch.items() if name not in host_entries)
        rows = jax.lax.with_sharding_constraint(
            jnp.arange(size, dtype=jnp.int32), NamedSharding(mesh, P(batch_axes))
        )
        return {**batch, "row": rows}

    def full_batch(params: dict, batch: dict, rng: jax.Array, examples: dict | None = None):
        batch = with_rows(batch)

        def loss_fn(p):
            p = freeze(p, frozen)
            return objective(outputs(p, batch, rng), p, rng, examples)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, metrics, grads

    if accum_steps == 1:
        return full_batch
    shards = axis_size(mesh, batch_axes)

    def constrain(x):
        spec_ = P(None, batch_axes, *([None] * (x.ndim - 2)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec_))

    def fetch(micro_batch: dict) -> dict:
        """One micro-batch's host entries onto the chips, unpacked to uint8 examples."""
        on_chip = NamedSharding(mesh, P(batch_axes, None), memory_kind="device")

        def unpack(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
            words = jax.device_put(x, on_chip)
            return jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(x.shape[0], *shape)

        return {
            name: unpack(x, host_entries[name]) if name in host_entries else x
            for name, x in micro_batch.items()
        }

    def embed(params: dict, batch: dict, rng: jax.Array) -> dict:
        out = outputs(freeze(params, frozen), batch, rng)
        if set(out) != {"embeddings"}:
            raise ValueError(
                f"train.accum_steps > 1 recomputes embeddings only; this model also returns "
                f"{sorted(set(out) - {'embeddings'})}: set train.accum_steps=1"
            )
        return out["embeddings"]

    def accumulated(params: dict, batch: dict, rng: jax.Array, examples: dict | None = None):
        if examples is not None:
            raise ValueError("per-example state (loss.kind='isogclr') needs train.accum_steps=1")
        micro = {
            name: x if name in host_entries else constrain(split_micro(x, shards, accum_steps))
            for name, x in with_rows(batch).items()
        }
        frozen_params = jax.lax.stop_gradient(params)
        _, stacked = jax.lax.scan(
            lambda c, mb: (c, embed(frozen_params, fetch(mb), rng)), None, micro
        )
        embeddings = jax.tree.map(lambda x: merge_micro(x, shards), stacked)
        scalars = {k: params[k] for k in SCALARS if k in params}

        def loss_of_embeddings(embeddings, scalars):
            return objective({"embeddings": embeddings}, scalars, rng)

        (loss, metrics), (g_embeddings, g_scalars) = jax.value_and_grad(
            loss_of_embeddings, argnums=(0, 1), has_aux=True
        )(embeddings, scalars)

        def backward(acc, xs):
            mb, cotangent = xs
            mb = fetch(mb)
            _, vjp = jax.vjp(lambda p: embed(p, mb, rng), params)
            return jax.tree.map(jnp.add, acc, vjp(cotangent)[0]), None

        cotangents = jax.tree.map(
            lambda g: constrain(split_micro(g, shards, accum_steps)), g_embeddings
        )
        grads, _ = jax.lax.scan(backward, jax.tree.map(jnp.zeros_like, params), (micro, cotangents))
        for name, g in g_scalars.items():
            grads[name] = grads[name] + g
        return loss, metrics, grads

    return accumulated


def make_train_step(
    grad_fn: GradFn,
    tx: optax.GradientTransformation,
    state_shardings: TrainState,
    batch_shardings: dict,
    schedule: optax.Schedule,
    seed: int = 0,
    skip_nonfinite: bool = False,
    table: ExampleTable | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings and
    the incoming state donated; the loss's randomness is `fold_in(key(seed), step)`,
    the same on any mesh. `metrics["nonfinite"]` flags a non-finite loss, gradient or
    new parameter (`train.divergence`); with `skip_nonfinite` such a step leaves the
    parameters, optimizer state and per-example state unchanged. With a `table`, the
    objective reads the batch's rows of `state.examples` (by `batch["index"]`) and
    returns their new values under `EXAMPLE_UPDATES`, which are written back."""

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        rows = None if table is None else table.lookup(state.examples, batch["index"])
        loss, metrics, grads = grad_fn(state.params, batch, rng, rows)
        examples = state.examples
        if table is not None:
            metrics = dict(metrics)
            examples = table.store(examples, batch["index"], metrics.pop(EXAMPLE_UPDATES))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = clamp_log_scale(optax.apply_updates(state.params, updates))
        grad_norm = optax.tree.norm(grads)
        flags = nonfinite_flags(loss, grad_norm, params)
        if skip_nonfinite:
            old = (state.params, state.opt_state, state.examples)
            params, opt_state, examples = keep_if_finite(flags, (params, opt_state, examples), old)
        metrics = {
            **metrics,
            "nonfinite": flags,
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": schedule(state.step),
        }
        new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, examples=examples)
        return new, metrics

    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )

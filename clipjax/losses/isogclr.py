"""iSogCLR (Qiu et al. 2023, "Not All Semantics are Created Equal: Contrastive
Self-supervised Learning with Automatic Temperature Individualization"), bimodal.

Every training example i has its own temperatures tau_i^I (as an image anchor) and
tau_i^T (as a text anchor). The robust, DRO-derived objective (the paper's eq. 6,
with the KL radius rho) is, per anchor direction,

    F = 1/n sum_i  tau_i (log(eps + g_i) + rho),
    g_i = 1/(B - 1) sum_{j != i} exp(h_ij / tau_i),   h_ij = s(x_i, t_j) - s(x_i, t_i)

(text anchors swap the roles of x and t), summed over the two directions. The
mini-batch g_i is a biased estimate of the dataset's, so (Algorithm 1) each example
keeps a moving average u_i and the step uses it:

    u_i   <- (1 - gamma) u_i + gamma g_i                      (u starts at 0)
    grad_w = 1/B sum_i tau_i / (eps + u_i) grad_w g_i         (the new u_i)
    grad_tau_i = log(eps + u_i) + rho - g_i / (eps + u_i) * E_{p_i}[h_ij / tau_i]
    m_i   <- (1 - beta) m_i + beta clip(grad_tau_i, -c, c)
    tau_i <- clip(tau_i - eta m_i, tau_min, tau_max)

with p_i the softmax of h_ij / tau_i over j != i; the model step uses the old tau.
Defaults are the authors' code's for CC3M (rho 6 at a batch of 512, gamma 0.8,
tau_init 0.01, eta 0.03, beta 0.9, c 5, tau in [0.005, 1]). rho is the radius of a KL
ball around the uniform distribution over a row's B - 1 negatives (the temperature
settles where KL(p_i || uniform) = rho), so it must stay below ln(B - 1); at another
batch, `rho_for_batch` keeps the authors' margin. Their code keeps the positive in g's
sum; here it is left out, as the paper writes g over the negatives.

Everything is in log space: u_i is kept as log u_i, and tau_i / (eps + u_i) grad g_i
is the gradient of tau_i exp(log g_i - log(eps + u_i)), whose exponent is at most
-log(gamma) because u_i >= gamma g_i. The per-row temperatures scale the rows, so the
strategy's log-sum-exp (gather, grouped or ring) computes log g_i unchanged, and
E_p[s_ij] comes from that log-sum-exp's row gradient (sum_j p_ij t_j).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from clipjax.losses.strategies import (
    LOSS_AXES,
    STRATEGIES,
    PairScorer,
    group_size_for,
    loss_mesh,
    psum_all,
    varying,
)
from clipjax.parallel import axis_size, axis_tuple

LOG_ZERO = -1e30  # log u before an example's first visit (u = 0)
# The per-example state, per anchor direction: temperature, log moving average, momentum.
EXAMPLE_FIELDS = tuple(
    f"{name}_{side}" for side in ("image", "text") for name in ("tau", "log_u", "tau_m")
)


ISOGCLR_PARAMETERS = (
    *("rho", "gamma", "eps", "tau_init", "tau_lr", "tau_momentum"),
    *("tau_min", "tau_max", "tau_grad_clip"),
)


AUTHORS_BATCH, AUTHORS_RHO = 512, 6.0


def rho_for_batch(batch: int) -> float:
    """The authors' rho moved to another contrast batch: the same margin below ln(B - 1),
    the largest KL divergence from uniform over B - 1 negatives."""
    if batch < 3:
        raise ValueError(f"iSogCLR contrasts each row with B - 1 >= 2 others; B={batch}")
    return round(AUTHORS_RHO - math.log((AUTHORS_BATCH - 1) / (batch - 1)), 4)


def rho_problems(rho: float, contrast_batch: int) -> list[str]:
    """At rho >= ln(B - 1) every temperature's gradient is positive: all fall to tau_min."""
    if contrast_batch < 3:
        return [
            f"loss.kind='isogclr' contrasts each row with the {contrast_batch} examples of its "
            "loss group; it needs at least 3"
        ]
    if 0 < rho < math.log(contrast_batch - 1):
        return []
    return [
        f"loss.isogclr.rho={rho} is not in (0, ln(B - 1) = {math.log(contrast_batch - 1):.3f}) "
        f"for the {contrast_batch} examples each row is contrasted with: at or above it every "
        f"temperature falls to tau_min; rho_for_batch({contrast_batch}) = "
        f"{rho_for_batch(contrast_batch)} keeps the authors' margin"
    ]


@dataclass(frozen=True)
class ISogCLRSpec:
    strategy: str = "gather"
    group_size: int = 1
    ring_chunk: int = 1024
    rho: float = 6.0
    gamma: float = 0.8
    eps: float = 1e-10
    tau_init: float = 0.01
    tau_lr: float = 0.03
    tau_momentum: float = 0.9  # beta: the weight of the new gradient
    tau_min: float = 0.005
    tau_max: float = 1.0
    tau_grad_clip: float = 5.0

    @classmethod
    def from_config(cls, loss) -> ISogCLRSpec:
        fields = {name: loss[name] for name in ("strategy", "group_size", "ring_chunk")}
        return cls(**fields, **{name: float(loss.isogclr[name]) for name in ISOGCLR_PARAMETERS})

    def initial_values(self) -> dict[str, float]:
        start = {"tau": self.tau_init, "log_u": LOG_ZERO, "tau_m": 0.0}
        return {name: start[name.rsplit("_", 1)[0]] for name in EXAMPLE_FIELDS}

    def problems(self) -> list[str]:
        out = []
        if self.strategy not in STRATEGIES:
            out.append(f"loss.strategy={self.strategy!r} is not one of {STRATEGIES}")
        if not 0 < self.gamma <= 1 or not 0 < self.tau_momentum <= 1:
            out.append(
                f"loss.isogclr.gamma={self.gamma} and tau_momentum={self.tau_momentum} "
                "must be in (0, 1]"
            )
        if not 0 < self.tau_min <= self.tau_init <= self.tau_max:
            out.append(
                f"loss.isogclr needs 0 < tau_min={self.tau_min} <= tau_init={self.tau_init} "
                f"<= tau_max={self.tau_max}"
            )
        if self.eps <= 0 or self.tau_lr < 0 or self.tau_grad_clip <= 0:
            out.append(
                f"loss.isogclr.eps={self.eps} and tau_grad_clip={self.tau_grad_clip} must be "
                f"positive, tau_lr={self.tau_lr} not negative"
            )
        return out


def isogclr_loss(
    image: jax.Array,
    text: jax.Array,
    examples: dict[str, jax.Array],
    *,
    mesh: Mesh,
    batch_axes,
    spec: ISogCLRSpec,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """(loss, metrics, the batch's new per-example state) of L2-normalised `[B, d]`
    embeddings and the batch's per-example state (`EXAMPLE_FIELDS`, each `[B]`). The
    loss's value is the mini-batch objective F; its gradient is Algorithm 1's."""
    axes = axis_tuple(batch_axes)
    shards = axis_size(mesh, axes)
    group = group_size_for(spec.strategy, spec.group_size, shards)
    scorer = PairScorer(spec.strategy == "ring", group, spec.ring_chunk)
    batch = image.shape[0]
    rows, per_row = P(LOSS_AXES, None), P(LOSS_AXES)
    body = partial(
        _per_device, spec=spec, scorer=scorer, batch=batch, group_batch=batch // (shards // group)
    )
    state = {name: examples[name].astype(jnp.float32) for name in EXAMPLE_FIELDS}
    return jax.shard_map(
        body,
        mesh=loss_mesh(mesh, axes, group),
        in_specs=(rows, rows, {name: per_row for name in EXAMPLE_FIELDS}),
        out_specs=(P(), P(), {name: per_row for name in EXAMPLE_FIELDS}),
    )(image.astype(jnp.float32), text.astype(jnp.float32), state)


def _per_device(image, text, state, *, spec, scorer, batch, group_batch):
    positive = jnp.sum(image * text, axis=1)
    surrogate = objective = 0.0
    new_state, metrics = {}, {}
    for side, rows, cols in (("image", image, text), ("text", text, image)):
        old = {name: state[f"{name}_{side}"] for name in ("tau", "log_u", "tau_m")}
        terms, new = _anchor_direction(spec, scorer, rows, cols, positive, group_batch, **old)
        surrogate += terms[0]
        objective += terms[1]
        new_state.update({f"{name}_{side}": value for name, value in new.items()})
        metrics[f"tau_{side}"] = psum_all(jnp.sum(old["tau"])) / batch
    surrogate, objective = psum_all(surrogate) / batch, psum_all(objective) / batch
    loss = surrogate + jax.lax.stop_gradient(objective - surrogate)  # F's value, Alg. 1's grad
    metrics["isogclr_objective"] = objective
    metrics["temperature"] = (metrics["tau_image"] + metrics["tau_text"]) / 2  # batch means
    return loss, metrics, new_state


def _anchor_direction(spec, scorer, rows, cols, positive, group_batch, tau, log_u, tau_m):
    """One direction's (surrogate sum, objective sum) and its anchors' new state."""
    one = varying(jnp.float32(1.0))  # the scale: the temperatures are in the rows
    scaled = rows / tau[:, None]  # per-row temperatures as a row scaling
    log_g = scorer.row_lse(scaled, cols, one, True) - positive / tau - math.log(group_batch - 1)
    fixed_log_g = jax.lax.stop_gradient(log_g)
    log_u = jnp.logaddexp(math.log1p(-spec.gamma) + log_u if spec.gamma < 1 else LOG_ZERO,
                          math.log(spec.gamma) + fixed_log_g)  # fmt: skip
    log_denominator = jnp.logaddexp(math.log(spec.eps), log_u)  # log(eps + u)
    surrogate = jnp.sum(tau * jnp.exp(log_g - log_denominator))
    objective = jnp.sum(tau * (jnp.logaddexp(math.log(spec.eps), fixed_log_g) + spec.rho))

    # E_p[h / tau]: the row gradient of the log-sum-exp is sum_j p_ij t_j
    fixed_rows, fixed_cols = jax.lax.stop_gradient((rows, cols))
    _, pullback = jax.vjp(
        lambda r: scorer.row_lse(r, fixed_cols, one, True), fixed_rows / tau[:, None]
    )
    (expected_cols,) = pullback(jnp.ones_like(tau))
    mean_h = (jnp.sum(fixed_rows * expected_cols, axis=1) - jax.lax.stop_gradient(positive)) / tau
    grad_tau = log_denominator + spec.rho - jnp.exp(fixed_log_g - log_denominator) * mean_h
    grad_tau = jnp.clip(grad_tau, -spec.tau_grad_clip, spec.tau_grad_clip)
    tau_m = (1 - spec.tau_momentum) * tau_m + spec.tau_momentum * grad_tau
    new_tau = jnp.clip(tau - spec.tau_lr * tau_m, spec.tau_min, spec.tau_max)
    return (surrogate, objective), {"tau": new_tau, "log_u": log_u, "tau_m": tau_m}

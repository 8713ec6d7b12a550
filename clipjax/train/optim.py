"""Optimizer and learning-rate schedule from the config's `optim` group."""

from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("adamw", "lion", "adafactor", "lamb")
SCHEDULES = ("cosine", "rsqrt", "constant_cooldown")
# The fields each optimizer and schedule read besides name, lr, warmup_steps,
# weight_decay and clip_norm; the config checks refuse the others.
OPTIMIZER_FIELDS = {
    "adamw": {"b1": float, "b2": float, "eps": float},
    "lion": {"b1": float, "b2": float},
    "adafactor": {"b1": float},  # its momentum; None: none (Shazeer and Stern's default)
    "lamb": {"b1": float, "b2": float, "eps": float},  # You et al. 2020; ALIGN's optimizer
}
SCHEDULE_FIELDS = {
    "cosine": {"end_lr_factor": float},
    "rsqrt": {},
    "constant_cooldown": {"cooldown_steps": int, "end_lr_factor": float},
}

# Parameter names never decayed: biases, norm scales, position embeddings,
# class tokens and the temperature (and SigLIP's bias).
NO_DECAY_NAMES = frozenset({"bias", "scale", "pos_embed", "cls_token", "logit_scale", "logit_bias"})


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup, then cosine decay, inverse square root, or constant with cooldown."""
    warmup = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
    rest = max(total_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, rest, alpha=cfg.end_lr_factor)
    elif cfg.schedule == "rsqrt":
        shift = max(cfg.warmup_steps, 1)
        after = lambda step: cfg.lr * jax.lax.rsqrt((step + shift) / shift)
    elif cfg.schedule == "constant_cooldown":
        cooldown = optax.linear_schedule(
            cfg.lr, cfg.lr * cfg.end_lr_factor, max(cfg.cooldown_steps, 1)
        )
        constant = max(rest - cfg.cooldown_steps, 0)
        after = optax.join_schedules([optax.constant_schedule(cfg.lr), cooldown], [constant])
    else:
        raise ValueError(f"optim.schedule={cfg.schedule!r} is unknown; expected one of {SCHEDULES}")
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def decay_mask(params):
    """True for parameters that get weight decay: matrices not named in NO_DECAY_NAMES."""

    def decayed(path, leaf) -> bool:
        names = {getattr(key, "key", getattr(key, "name", None)) for key in path}
        return leaf.ndim >= 2 and not (names & NO_DECAY_NAMES)

    return jax.tree_util.tree_map_with_path(decayed, params)


def build_optimizer(
    cfg, total_steps: int, frozen: tuple[str, ...] = ()
) -> optax.GradientTransformation:
    """The optimizer of `cfg`; the top-level parameter groups in `frozen` (LiT's
    locked tower) get zero updates and no optimizer state."""
    trainable = _trainable_optimizer(cfg, total_steps)
    if not frozen:
        return trainable

    # multi_transform masks each inner state: frozen leaves hold no moments.
    return optax.multi_transform(
        {False: trainable, True: optax.set_to_zero()},
        lambda params: {k: jax.tree.map(lambda _, k=k: k in frozen, v) for k, v in params.items()},
    )


def _trainable_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    if cfg.name in ("adamw", "lamb"):  # LAMB: Adam's moments, a trust ratio per layer
        core = (optax.adamw if cfg.name == "adamw" else optax.lamb)(
            schedule,
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )
    elif cfg.name == "lion":
        core = optax.lion(
            schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask
        )
    elif cfg.name == "adafactor":
        core = optax.adafactor(
            schedule,
            momentum=cfg.get("b1"),
            weight_decay_rate=cfg.weight_decay or None,
            weight_decay_mask=decay_mask,
        )
    else:
        raise ValueError(f"optim.name={cfg.name!r} is unknown; expected one of {OPTIMIZERS}")
    if cfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), core)
    return core

"""The trainer's groups: `optim` (the fields each optimizer and schedule read),
`train`, `checkpoint`, `distributed` and the top-level seed and `init_from`."""

from __future__ import annotations

from pathlib import Path

from clipjax.fieldcheck import choice, positive, type_problems, unused_fields
from clipjax.train.divergence import check_policy
from clipjax.train.optim import OPTIMIZER_FIELDS, OPTIMIZERS, SCHEDULE_FIELDS, SCHEDULES
from clipjax.train.profile import profile_problems
from clipjax.train.watchdog import check_watchdog

TRAIN_FIELDS = {
    "steps": int,
    "batch_size": int,
    "log_every": int,
    "accum_steps": int,
    "host_batch": bool,
    "on_nonfinite": str,
    "max_skipped_in_a_row": int,
    "stall_timeout": float,
    "preemption_grace": float,
}
# Fields added after configs were first saved: absent (an older config.json) means unset
TRAIN_OPTIONAL = {"peak_tflops": float, "samples_seen": int, "profile_steps": tuple}
CHECKPOINT_FIELDS = {"every": int, "keep": int, "keep_period": int, "async_save": bool}
DISTRIBUTED_FIELDS = {"init_timeout": int, "heartbeat_timeout": int, "shutdown_timeout": int}
_OPTIM_COMMON = {
    **{"name": str, "schedule": str, "warmup_steps": int},
    **{"lr": float, "clip_norm": float, "weight_decay": float},
}


def trainer_problems(c, family: str, has_images: bool, reads_data: bool = True) -> list[str]:
    """Every problem of the trainer's groups; `family` is `model.name`, `has_images`
    whether the data gives images; without `reads_data`, `init_from` need not exist."""
    problems = type_problems(c, "config", {"seed": int})
    problems += type_problems(c.train, "train", TRAIN_FIELDS)
    problems += type_problems(c.train, "train", TRAIN_OPTIONAL, optional=True)
    problems += type_problems(c.checkpoint, "checkpoint", CHECKPOINT_FIELDS)
    problems += type_problems(c.distributed, "distributed", DISTRIBUTED_FIELDS)
    problems += type_problems(c.optim, "optim", _OPTIM_COMMON)
    if problems:
        return problems
    problems += _optim_choices(c.optim)
    problems += _optim(c.optim, c.train.steps)
    problems += _train(c.train, family, has_images, c.get("data", {}).get("image_size"))
    problems += _checkpoint(c.checkpoint)
    return problems + _init_from(c, reads_data)


def _optim_choices(o) -> list[str]:
    """The optimizer's and schedule's own fields: set, typed, and no others."""
    problems = choice("optim.name", o.name, OPTIMIZERS) + choice(
        "optim.schedule", o.schedule, SCHEDULES
    )
    if problems:
        return problems
    specific = {**SCHEDULE_FIELDS[o.schedule], **OPTIMIZER_FIELDS[o.name]}
    because = f"by optim.name={o.name!r} with optim.schedule={o.schedule!r}"
    problems = unused_fields(o, "optim", {**_OPTIM_COMMON, **specific}, because)
    optional = OPTIONAL_OPTIM_FIELDS.get(o.name, ())
    problems += type_problems(o, "optim", {k: t for k, t in specific.items() if k not in optional})
    return problems + type_problems(o, "optim", {k: specific[k] for k in optional}, optional=True)


# Adafactor's b1 is its momentum; None (the default of Shazeer and Stern) keeps none.
OPTIONAL_OPTIM_FIELDS = {"adafactor": ("b1",)}


def _optim(o, steps: int) -> list[str]:
    problems = positive("optim.lr", o.lr) + positive("train.steps", steps)
    if o.warmup_steps < 0 or o.warmup_steps >= steps:
        problems.append(f"optim.warmup_steps={o.warmup_steps} must be in [0, train.steps={steps})")
    cooldown = o.get("cooldown_steps")
    if (
        o.schedule == "constant_cooldown"
        and isinstance(cooldown, int)
        and (o.warmup_steps + cooldown > steps)
    ):
        problems.append("optim.warmup_steps + optim.cooldown_steps exceed train.steps")
    for name in ("b1", "b2"):
        value = o.get(name)
        if isinstance(value, int | float) and not 0 <= value < 1:
            problems.append(f"optim.{name}={value} must be in [0, 1)")
    return problems


def _train(t, family: str, has_images: bool, image_size: int | None) -> list[str]:
    problems = positive("train.batch_size", t.batch_size) + positive("train.log_every", t.log_every)
    if t.accum_steps < 1:
        problems.append(f"train.accum_steps={t.accum_steps} must be at least 1")
    if family == "coca" and t.accum_steps != 1:
        problems.append(
            f"train.accum_steps={t.accum_steps}: CoCa's captioning loss is not accumulated; use 1"
        )
    problems += check_policy(t.on_nonfinite, t.max_skipped_in_a_row)
    problems += check_watchdog(t.stall_timeout, t.preemption_grace)
    problems += profile_problems(tuple(t.get("profile_steps") or ()), t.steps)
    for field in ("peak_tflops", "samples_seen"):
        if t.get(field) is not None:
            problems += positive(f"train.{field}", t[field])
    if t.host_batch and not has_images:
        problems.append("train.host_batch=True keeps images in host memory; this data has none")
    elif t.host_batch and isinstance(image_size, int) and image_size % 2:
        problems.append(
            f"train.host_batch=True packs pixels into 4-byte words: data.image_size="
            f"{image_size} must be even"
        )
    if t.host_batch and t.accum_steps < 2:
        problems.append(
            "train.host_batch=True streams micro-batches from host memory: set "
            "train.accum_steps to 2 or more"
        )
    return problems


def _checkpoint(k) -> list[str]:
    problems = []
    for field in ("every", "keep", "keep_period"):
        if k[field] < 0:
            problems.append(f"checkpoint.{field}={k[field]} must be >= 0")
    return problems + unused_fields(k, "checkpoint", CHECKPOINT_FIELDS, "by the trainer")


def _init_from(c, reads_data: bool) -> list[str]:
    problems = []
    init_from = c.get("init_from") or ""
    if reads_data and init_from and "://" not in init_from and not Path(init_from).exists():
        problems.append(f"init_from={init_from!r} does not exist")
    parts = tuple(c.get("init_parts") or ())
    if parts and not init_from:
        problems.append(f"init_parts={parts} is set but init_from is empty")
    frozen = tuple(c.model.get("frozen") or ())
    if frozen and not init_from:
        problems.append(
            f"model.frozen={frozen} locks towers at their random init; set init_from to the "
            "checkpoint to load them from (LiT)"
        )
    return problems

"""Published pod recipes as config edits: the schedule sized by samples seen, bf16
compute, scanned and rematerialised blocks, a zero-shot ImageNet eval, the loader's
workers from the host, and each recipe's `:smoke` variant for a CPU.

The configs under `configs/` call these with the numbers of the paper or reference
code they cite; `clipjax compile` shows each fits its target topology (BENCHMARKS.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import ml_collections

from clipjax.evaluate.fields import eval_entry


@dataclass(frozen=True)
class Recipe:
    """What a paper publishes for one training run."""

    batch_size: int
    samples_seen: int
    lr: float
    weight_decay: float
    warmup_steps: int | None  # None: `warmup_fraction` of the steps
    optimizer: str = "adamw"
    b1: float | None = 0.9
    b2: float | None = 0.98
    eps: float | None = 1e-6
    schedule: str = "cosine"  # or "linear": warmup then straight down to 0
    warmup_fraction: float = 0.0
    end_lr_factor: float = 0.0

    def with_lr(self, lr: float) -> Recipe:
        return replace(self, lr=lr)


# Radford et al. 2021, section 2.5 and Table 18: batch 32,768; 32 epochs of 400M pairs;
# Adam with decoupled weight decay 0.2; beta2 0.98 and eps 1e-6 for ViTs; 2,000 warmup
# iterations, cosine decay. The learning rate is per model (Table 20).
OPENAI_CLIP = Recipe(
    batch_size=32_768,
    samples_seen=32 * 400_000_000,
    lr=5e-4,
    weight_decay=0.2,
    warmup_steps=2_000,
)
# Zhai et al. 2023 (SigLIP), sections 4.2, 4.6, 4.7 and appendix C: batch 32k, 40B
# examples seen, lr 1e-3, weight decay 1e-4, beta2 0.95, cosine. The paper states no
# warmup for these runs: 3% of the steps, as big_vision's SigLIP config does.
SIGLIP = Recipe(
    batch_size=32_768,
    samples_seen=40_000_000_000,
    lr=1e-3,
    weight_decay=1e-4,
    warmup_steps=None,
    warmup_fraction=0.03,
    b2=0.95,
)
# Jia et al. 2021 (ALIGN), section 5: batch 16,384; LAMB with weight decay 1e-5; lr
# warmed up linearly to 1e-3 over 10k steps, then linearly to 0 at 1.2M steps. LAMB's
# betas and eps are not stated: optax's defaults.
ALIGN = Recipe(
    batch_size=16_384,
    samples_seen=1_200_000 * 16_384,
    lr=1e-3,
    weight_decay=1e-5,
    warmup_steps=10_000,
    optimizer="lamb",
    b2=0.999,
    schedule="linear",
)
# Zhai et al. 2022 (LiT), appendix D (public data, CC12M): Adam 0.9/0.999, lr 1e-3,
# decoupled weight decay 1e-4, cosine with 2k warmup steps, batch 16,384, 20 epochs of
# CC12M (200M pairs).
LIT = Recipe(
    batch_size=16_384,
    samples_seen=200_000_000,
    lr=1e-3,
    weight_decay=1e-4,
    warmup_steps=2_000,
    b2=0.999,
    eps=1e-8,
)
# Yu et al. 2022 (CoCa), section 4.1: batch 65,536 for 500k steps; Adafactor with beta1
# 0.9 and decoupled weight decay 0.01; lr warmed up over the first 2% of the steps to
# 8e-4, then decayed linearly. Their beta2 of 0.999 has no counterpart in optax's
# Adafactor (its second moment decays as step^-0.8).
COCA = Recipe(
    batch_size=65_536,
    samples_seen=500_000 * 65_536,
    lr=8e-4,
    weight_decay=0.01,
    warmup_steps=None,
    warmup_fraction=0.02,
    optimizer="adafactor",
    b2=None,
    eps=None,
    schedule="linear",
)


RECIPE_STREAMS = 1024


def apply_recipe(config: ml_collections.ConfigDict, recipe: Recipe, eval_every: int) -> None:
    """Sets `config`'s optimizer, schedule and batch from `recipe`, trains in bf16 with
    scanned, rematerialised blocks and fully sharded state, and evaluates zero-shot
    ImageNet every `eval_every` steps (its `dataset_dir` must be given)."""
    train_for_samples(config, recipe.batch_size, recipe.samples_seen)
    _optimizer(config.optim, recipe)
    _schedule(config, recipe)
    config.model.dtype = "bfloat16"  # parameters, logits and the loss stay float32
    config.model.param_dtype = "float32"
    config.model.scan_layers = True
    config.model.remat = "full"
    config.model.attention = "auto"
    config.mesh.update(dict(data=1, fsdp=-1, tensor=1))
    config.loss.strategy = "ring"
    # workers own whole streams: 1,024 of them keep 4-16 per host busy on up to 64-256
    # hosts, and divide every power-of-two host count up to 1,024 (a resumable position)
    config.data.streams = RECIPE_STREAMS
    config.data.workers = host_workers()
    config.train.log_every = 100
    config.checkpoint.every = 2000
    config.evals = ml_collections.ConfigDict({"imagenet": imagenet_zeroshot(eval_every)})


def train_for_samples(config: ml_collections.ConfigDict, batch: int, samples: int) -> None:
    """`train.steps` follows `train.samples_seen / train.batch_size` (rounded up), also
    when either is overridden on the command line; an explicit `train.steps` wins."""
    config.train.batch_size = batch
    config.train.samples_seen = samples
    seen, size = config.train.get_ref("samples_seen"), config.train.get_ref("batch_size")
    config.train.steps = (seen + size - 1) // size


def _optimizer(o: ml_collections.ConfigDict, recipe: Recipe) -> None:
    o.name = recipe.optimizer
    o.lr = recipe.lr
    o.weight_decay = recipe.weight_decay
    o.b1 = recipe.b1
    o.b2 = recipe.b2
    o.eps = recipe.eps


def _schedule(config: ml_collections.ConfigDict, recipe: Recipe) -> None:
    o, steps = config.optim, config.train.get_ref("steps")
    if recipe.warmup_steps is None:  # a fraction of the steps, as the steps change
        per_mille = round(1000 * recipe.warmup_fraction)
        o.warmup_steps = steps * per_mille // 1000
    else:
        o.warmup_steps = recipe.warmup_steps
    o.end_lr_factor = recipe.end_lr_factor
    if recipe.schedule == "linear":  # constant for 0 steps, then the cooldown to the end
        o.schedule = "constant_cooldown"
        o.cooldown_steps = steps - o.get_ref("warmup_steps")
    else:
        o.schedule = recipe.schedule
        o.cooldown_steps = None


def imagenet_zeroshot(every: int) -> ml_collections.ConfigDict:
    """Zero-shot ImageNet-1k on the validation images as an image folder (`val/<wnid>/`),
    with the bundled class names and OpenAI's 80 templates; `dataset_dir` is left empty,
    so a launch without `--config.evals.imagenet.dataset_dir` stops with that name."""
    return eval_entry(
        "zeroshot", "image_folder", dataset_name="imagenet1k", split="val", every=every
    )


def host_workers(cpus: int | None = None) -> int:
    """Decoding processes for this host: all its cores but two (the main process and
    the device feed), at most 32, at least 1."""
    cpus = cpus or len(os.sched_getaffinity(0))
    return max(1, min(32, cpus - 2))


def smoke_variant(
    recipe_config: ml_collections.ConfigDict, tiny: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """The recipe at the size of the family's `tiny` config: its towers, data, tokenizer
    and digits eval, with the recipe's optimizer, schedule shape, bf16 compute, scanned
    remat blocks, attention choice and loss, for a few steps on one CPU."""
    smoke = recipe_config.copy_and_resolve_references()
    for group in ("data", "tokenizer", "init_from", "init_parts"):
        if group in tiny:
            smoke[group] = tiny[group]
    kept = {k: recipe_config.model[k] for k in ("dtype", "scan_layers", "remat", "attention")}
    smoke.model = tiny.model.copy_and_resolve_references()
    smoke.model.update(kept)
    smoke.evals = ml_collections.ConfigDict(
        {k: v for k, v in tiny.evals.items() if v.kind == "zeroshot"}
    )
    smoke.mesh.update(dict(data=-1, fsdp=1, tensor=1))
    smoke.data.workers = 0
    train_for_samples(smoke, 32, 32 * 6)
    smoke.train.log_every = 2
    smoke.checkpoint.every = 0
    warmup = 0 if recipe_config.optim.warmup_steps == 0 else 2
    smoke.optim.warmup_steps = warmup
    if smoke.optim.schedule == "constant_cooldown":  # the linear decay to the end
        steps, warmup = smoke.train.get_ref("steps"), smoke.optim.get_ref("warmup_steps")
        smoke.optim.cooldown_steps = steps - warmup
    return smoke

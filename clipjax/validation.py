"""A run's config checked as a whole: each subsystem checks its own groups, and
the few rules that join two subsystems (the batch over the mesh, the text tower
against the tokenizer) are stated here once.

    data, tokenizer  clipjax.data.checks
    model            clipjax.models.checks (per family and image tower)
    loss             clipjax.losses.checks (per kind)
    optim, train, checkpoint, distributed, init_from   clipjax.train.checks
    evals            clipjax.evaluate.fields
    mesh             clipjax.parallel.batch_split_problems
"""

from __future__ import annotations

import ml_collections

from clipjax.config import ConfigError
from clipjax.data.checks import IMAGE_TEXT_SOURCES, data_problems, tokenizer_problems
from clipjax.evaluate.fields import eval_batches, eval_problems
from clipjax.fieldcheck import unused_fields
from clipjax.losses.checks import loss_problems, loss_split_problems
from clipjax.models.checks import model_problems, text_tokenizer_problems
from clipjax.parallel import batch_split_problems
from clipjax.train.checks import trainer_problems
from clipjax.train.example_state import split_problems as table_split_problems

TOP_LEVEL = (
    *("seed", "data", "tokenizer", "model", "loss", "optim", "train"),
    *("checkpoint", "distributed", "init_from", "init_parts", "mesh", "sharding_rules", "evals"),
)
WITHOUT_TEXT = ("tokenizer",)  # groups a family without a text tower (Symile) does not read


def config_problems(
    c: ml_collections.ConfigDict, num_devices: int, num_processes: int, reads_data: bool = True
) -> list[str]:
    """Every problem of `c` for a run on `num_devices` in `num_processes`; without
    `reads_data` (compiling only) the training data and `init_from` need not exist."""
    family = c.model.get("name")
    has_text = family != "symile"
    top = set(TOP_LEVEL) - (set() if has_text else set(WITHOUT_TEXT))
    problems = unused_fields(c, "", top, f"by model.name={family!r}")
    problems += data_problems(c.data, c.train.batch_size, num_processes, reads_data)
    if family == "symile" and c.data.get("source") != "xor":
        problems.append(
            f"model.name='symile' reads vectors per modality; data.source={c.data.source!r} "
            "gives images and texts (use 'xor')"
        )
    if family != "symile" and c.data.get("source") == "xor":
        problems.append("data.source='xor' gives Symile's three modalities; set model.name=symile")
    has_images = c.data.get("source") in IMAGE_TEXT_SOURCES
    problems += model_problems(c.model, c.data.image_size if has_images else None)
    if family == "symile" and c.data.get("source") == "xor":
        problems += _xor_modalities(c)
    if has_text:
        problems += _text_and_tokenizer(c)
    problems += loss_problems(c.loss, family, c.model.get("logit_bias_init"), c.model.get("frozen"))
    problems += trainer_problems(c, family, has_images, reads_data)
    problems += _per_example_state(c, has_images)
    problems += eval_problems(c.evals, reads_data)
    if problems:
        return problems  # the mesh check divides by these sizes
    batches = [("train.batch_size", c.train.batch_size), *eval_batches(c.evals)]
    split, shards = batch_split_problems(
        c.mesh, c.sharding_rules, batches, num_devices, num_processes
    )
    problems += split
    if shards is not None:
        problems += loss_split_problems(c.loss, shards, c.train.batch_size)
        if c.loss.get("kind") == "isogclr":
            problems += table_split_problems(shards)
        local = c.train.batch_size // shards
        if local % c.train.accum_steps:
            problems.append(
                f"train.accum_steps={c.train.accum_steps} does not divide the "
                f"{local} examples each batch shard gets per step"
            )
    return problems


def _text_and_tokenizer(c) -> list[str]:
    problems, tokenizer = tokenizer_problems(c.tokenizer)
    text = c.model.get("text")
    if tokenizer is None or not isinstance(text, ml_collections.ConfigDict):
        return problems
    pad_id = getattr(tokenizer, "pad_id", 0)
    problems += text_tokenizer_problems(text, c.tokenizer.kind, tokenizer.vocab_size, pad_id)
    if c.tokenizer.context_length != text.get("context_length"):
        problems.append(
            f"tokenizer.context_length={c.tokenizer.context_length} differs from "
            f"model.text.context_length={text.get('context_length')}"
        )
    return problems


def _xor_modalities(c) -> list[str]:
    modalities = c.model.get("modalities") or {}
    if sorted(modalities) != ["a", "b", "c"]:
        return [f"data.source='xor' gives modalities a, b, c, not {sorted(modalities)}"]
    return [
        f"model.modalities.{name}.input_dim={tower.get('input_dim')} differs from "
        f"data.xor_bits={c.data.xor_bits}"
        for name, tower in modalities.items()
        if tower.get("input_dim") != c.data.xor_bits
    ]


def validate(
    config: ml_collections.ConfigDict,
    num_devices: int,
    num_processes: int = 1,
    reads_data: bool = True,
) -> None:
    """Raises ConfigError listing every problem of `config`; runs before any model is
    built or anything compiled. `reads_data=False` (compiling only) skips the checks
    that the training data and `init_from` exist."""
    problems = config_problems(config, num_devices, num_processes, reads_data)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _per_example_state(c, has_images: bool) -> list[str]:
    """iSogCLR keeps state per example: it needs their numbers and one pass per batch."""
    if c.loss.get("kind") != "isogclr":
        if has_images and c.data.get("samples_per_shard") is not None:
            return [
                f"data.samples_per_shard is not used by loss.kind={c.loss.get('kind')!r}: "
                "remove it or set --config.data.samples_per_shard=None (only per-example "
                "state, loss.kind='isogclr', reads example numbers)"
            ]
        return []
    problems = []
    if not has_images or not c.data.get("samples_per_shard"):
        problems.append(
            "loss.kind='isogclr' keeps state per training example and needs their numbers: "
            "set data.samples_per_shard (the most samples a shard holds) on image-text data"
        )
    if c.train.get("accum_steps", 1) != 1:
        problems.append(f"loss.kind='isogclr' needs train.accum_steps=1, got {c.train.accum_steps}")
    return problems


def eval_config_problems(c: ml_collections.ConfigDict, num_devices: int) -> list[str]:
    """What `clipjax eval` needs of a config: valid evals whose batches fit the mesh."""
    if not c.get("evals"):
        return ["config.evals is empty: nothing to evaluate"]
    problems = eval_problems(c.evals)
    split, _ = batch_split_problems(c.mesh, c.sharding_rules, eval_batches(c.evals), num_devices, 1)
    return problems + split

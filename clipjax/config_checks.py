"""Cross-field checks of a resolved config, each returning a readable problem."""

from __future__ import annotations

import math
from pathlib import Path

import ml_collections

from clipjax.data.decode import parse_keys
from clipjax.data.loader import stream_range, train_sources
from clipjax.data.shards import check_openers
from clipjax.data.skips import check_skip_limits
from clipjax.data.tokenizers import build_tokenizer
from clipjax.evaluate.fields import EVAL_DEFAULTS, EVAL_KINDS, EVAL_SOURCES, eval_field
from clipjax.family_checks import family_field_types, family_problems, is_image_text
from clipjax.losses.contrastive import LossSpec
from clipjax.models import MODELS
from clipjax.models.layers import ACTIVATIONS, REMAT_POLICIES, dtype_of
from clipjax.models.text import TEXT_POOLS
from clipjax.models.two_tower import IMAGE_TOWERS
from clipjax.models.vit import POOLS
from clipjax.parallel import axis_tuple, resolve_mesh_shape, rules_table
from clipjax.train.divergence import check_policy
from clipjax.train.objective import MULTI_KINDS, ObjectiveSpec
from clipjax.train.optim import OPTIMIZERS, SCHEDULES
from clipjax.train.watchdog import check_watchdog

DATA_SOURCES = ("digits", "shards", "xor")

# Fields the trainer does arithmetic with; a config file may not give them other types.
FIELD_TYPES = {
    "seed": int,
    "train.steps": int,
    "train.batch_size": int,
    "train.log_every": int,
    "train.accum_steps": int,
    "train.host_batch": bool,
    "train.on_nonfinite": str,
    "train.max_skipped_in_a_row": int,
    "train.stall_timeout": float,
    "train.preemption_grace": float,
    "loss.group_size": int,
    "loss.ring_chunk": int,
    "optim.lr": float,
    "optim.warmup_steps": int,
    "optim.weight_decay": float,
    "optim.clip_norm": float,
    "data.image_size": int,
    "data.shuffle_buffer": int,
    "data.workers": int,
    "data.max_skipped_fraction": float,
    "data.sanity_samples": int,
    "data.streams": int,
    "checkpoint.every": int,
    "distributed.init_timeout": int,
    "distributed.heartbeat_timeout": int,
    "distributed.shutdown_timeout": int,
    "checkpoint.keep": int,
    "checkpoint.keep_period": int,
    "model.embed_dim": int,
    "model.temperature_init": float,
    **{f"model.text.{field}": int for field in ("width", "depth", "heads")},
    "model.text.vocab_size": int,
    "model.text.context_length": int,
    "model.text.pad_id": int,
    "tokenizer.path": str,
    "tokenizer.context_length": int,
}

# The image tower's fields, by `model.image.kind` (default "vit").
IMAGE_FIELD_TYPES = {
    "vit": {"width": int, "depth": int, "heads": int, "patch_size": int},
    "efficientnet": {"width_coefficient": float, "depth_coefficient": float, "se_ratio": float},
}

# Fields a config may leave out (the model's default applies) but not give another type.
OPTIONAL_FIELD_TYPES = {"model.image.kind": str, "model.text.causal": bool}


def _lookup(c, path: str):
    value = c
    for name in path.split("."):
        value = value.get(name) if hasattr(value, "get") else None
    return value


def _required_types(c) -> dict[str, type]:
    if not is_image_text(c):
        common = {p: t for p, t in FIELD_TYPES.items() if not p.startswith("model.text.")}
        return {**common, **family_field_types(c)}
    kind = _lookup(c, "model.image.kind") or "vit"
    image = IMAGE_FIELD_TYPES.get(kind, {})
    image_types = {f"model.image.{f}": t for f, t in image.items()}
    return {**FIELD_TYPES, **image_types, **family_field_types(c)}


def _type_ok(value, expected: type) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    allowed = (int, float) if expected is float else (expected,)
    return not isinstance(value, bool) and isinstance(value, allowed)


def _types(c, problems: list[str]) -> bool:
    """True when every field in FIELD_TYPES (and the image kind's IMAGE_FIELD_TYPES) has
    its type, ints passing for floats, and every OPTIONAL_FIELD_TYPES field given has its."""
    ok = True
    optional = {p: t for p, t in OPTIONAL_FIELD_TYPES.items() if _lookup(c, p) is not None}
    for path, expected in {**_required_types(c), **optional}.items():
        value = _lookup(c, path)
        if not _type_ok(value, expected):
            problems.append(
                f"{path}={value!r} has type {type(value).__name__}, expected {expected.__name__}"
            )
            ok = False
    return ok


def _attempt(problems: list[str], check, *args):
    """Runs `check(*args)`; a ValueError becomes a problem and the result None."""
    try:
        return check(*args)
    except ValueError as exc:
        problems.append(str(exc))
        return None


def _choice(problems: list[str], field: str, value, allowed) -> None:
    if value not in allowed:
        problems.append(f"{field}={value!r} is not one of {tuple(allowed)}")


def _positive(problems: list[str], field: str, value) -> None:
    if not value > 0:
        problems.append(f"{field}={value!r} must be positive")


def _eval_batches(c) -> list[tuple[str, int]]:
    return [
        (f"evals.{n}.batch_size", eval_field(e, "batch_size"))
        for n, e in c.evals.items()
        if isinstance(e, ml_collections.ConfigDict)
    ]


def _batches_divide(
    c, batches, num_devices: int, num_processes: int, problems: list[str]
) -> int | None:
    """Checks each (field, size) splits over the mesh's batch axes; returns that size."""
    sizes = _attempt(problems, resolve_mesh_shape, c.mesh, num_devices)
    rules = _attempt(problems, rules_table, c.sharding_rules)
    if sizes is None or rules is None:
        return None
    names = axis_tuple(rules.get("batch"))
    data_parallel = math.prod(sizes[a] for a in names)
    for field, size in batches:
        if size % data_parallel:
            problems.append(
                f"{field}={size} is not divisible by the data-parallel size {data_parallel} "
                f"(mesh {sizes}, batch sharded over {names})"
            )
        elif size % num_processes:
            problems.append(f"{field}={size} is not divisible by {num_processes} processes")
    return data_parallel


def _mesh_and_batch(c, num_devices: int, num_processes: int, problems: list[str]) -> None:
    batches = [("train.batch_size", c.train.batch_size), *_eval_batches(c)]
    data_parallel = _batches_divide(c, batches, num_devices, num_processes, problems)
    if data_parallel is None:
        return
    _streams(c, num_processes, problems)
    local = c.train.batch_size // data_parallel
    if c.train.accum_steps >= 1 and local % c.train.accum_steps:
        problems.append(
            f"train.accum_steps={c.train.accum_steps} does not divide the "
            f"{local} examples each batch shard gets per step"
        )
    if c.loss.strategy == "grouped" and (
        c.loss.group_size < 1 or data_parallel % c.loss.group_size
    ):
        problems.append(
            f"loss.group_size={c.loss.group_size} must divide the {data_parallel} batch shards"
        )


def _streams(c, num_processes: int, problems: list[str]) -> None:
    streams = c.data.streams
    if streams < 0:
        problems.append(f"data.streams={streams}; expected 0 (one per process) or more")
        return
    owned = _attempt(problems, stream_range, streams, 0, num_processes)
    if owned is not None and c.train.batch_size % (len(owned) * num_processes):
        problems.append(
            f"train.batch_size={c.train.batch_size} is not divisible by "
            f"data.streams={len(owned) * num_processes}"
        )


def _vector_model(c, problems: list[str]) -> None:
    """The model fields every family has (Symile's towers: family_checks)."""
    for field in ("dtype", "param_dtype"):
        _attempt(problems, dtype_of, c.model[field])
    _choice(problems, "model.remat", c.model.remat, REMAT_POLICIES)
    if not 0 < c.model.temperature_init <= 1:
        problems.append(f"model.temperature_init={c.model.temperature_init} must be in (0, 1]")


def _model(c, problems: list[str]) -> None:
    m = c.model
    for field in ("dtype", "param_dtype"):
        _attempt(problems, dtype_of, m[field])
    for tower in ("image", "text"):
        _choice(problems, f"model.{tower}.act", m[tower].act, ACTIVATIONS)
    if m.text.width % m.text.heads:
        problems.append(f"model.text.width={m.text.width} is not divisible by heads={m.text.heads}")
    _choice(problems, "model.image.kind", m.image.get("kind", "vit"), IMAGE_TOWERS)
    if m.image.get("kind", "vit") == "vit":
        _vit(m.image, problems)
    elif m.image.kind == "efficientnet":
        _efficientnet(m.image, problems)
    _choice(problems, "model.remat", m.remat, REMAT_POLICIES)
    if m.image.image_size != c.data.image_size:
        problems.append(
            f"model.image.image_size={m.image.image_size} differs from "
            f"data.image_size={c.data.image_size}"
        )
    if not 0 < m.temperature_init <= 1:
        problems.append(f"model.temperature_init={m.temperature_init} must be in (0, 1]")


def _vit(image, problems: list[str]) -> None:
    if image.width % image.heads:
        problems.append(f"model.image.width={image.width} is not divisible by heads={image.heads}")
    _choice(problems, "model.image.pool", image.pool, POOLS)
    if image.image_size % image.patch_size:
        problems.append(
            f"model.image.image_size={image.image_size} is not divisible by "
            f"patch_size={image.patch_size}"
        )


def _efficientnet(image, problems: list[str]) -> None:
    for field in ("width_coefficient", "depth_coefficient"):
        _positive(problems, f"model.image.{field}", image[field])
    if not 0 <= image.se_ratio <= 1:
        problems.append(f"model.image.se_ratio={image.se_ratio} must be in [0, 1] (0: no SE)")


def _text(c, problems: list[str]) -> None:
    tokenizer = _attempt(problems, build_tokenizer, c.tokenizer)
    if tokenizer is None:
        return
    if tokenizer.vocab_size > c.model.text.vocab_size:
        problems.append(
            f"model.text.vocab_size={c.model.text.vocab_size} is smaller than the "
            f"{c.tokenizer.kind!r} tokenizer's {tokenizer.vocab_size} ids"
        )
    _choice(problems, "model.text.pool", c.model.text.pool, TEXT_POOLS)
    if c.model.text.pool == "cls" and c.model.text.get("causal", True):
        problems.append(
            "model.text.pool='cls' needs model.text.causal=False: with a causal encoder "
            "position 0 sees only itself"
        )
    eos_id = c.model.text.get("eos_id", -1)
    if c.model.text.pool == "eos" and not 0 <= eos_id < c.model.text.vocab_size:
        problems.append(
            f"model.text.pool='eos' needs model.text.eos_id in [0, {c.model.text.vocab_size}), "
            f"got {eos_id}"
        )
    if c.model.text.pool == "argmax" and c.tokenizer.kind in ("hf", "sentencepiece"):
        problems.append(
            f"model.text.pool='argmax' pools at the largest token id, which is the end token "
            f"only for CLIP-style vocabularies; with tokenizer.kind={c.tokenizer.kind!r} set "
            f"model.text.pool='last' and model.text.pad_id={tokenizer.pad_id}"
        )
    pad_id = getattr(tokenizer, "pad_id", 0)
    if c.model.text.pad_id != pad_id:
        if c.model.text.pool == "last":
            problems.append(
                f"model.text.pad_id={c.model.text.pad_id} but the {c.tokenizer.kind!r} "
                f"tokenizer pads with {pad_id}: pool='last' would pool at padding"
            )
        if not c.model.text.get("causal", True):
            problems.append(
                f"model.text.pad_id={c.model.text.pad_id} but the {c.tokenizer.kind!r} "
                f"tokenizer pads with {pad_id}: model.text.causal=False would attend to padding"
            )
    if c.tokenizer.context_length != c.model.text.context_length:
        problems.append(
            f"tokenizer.context_length={c.tokenizer.context_length} differs from "
            f"model.text.context_length={c.model.text.context_length}"
        )


def _train_shards(c, problems: list[str]) -> None:
    if not c.data.train_shards:
        problems.append("data.source='shards' needs data.train_shards (a brace spec of tar files)")
        return
    sources = _attempt(problems, train_sources, c.data)
    if sources is not None:
        _attempt(problems, check_openers, [url for urls in sources for url in urls])


def _data(c, problems: list[str], reads_data: bool = True) -> None:
    _choice(problems, "data.source", c.data.source, DATA_SOURCES)
    if c.data.source == "shards" and reads_data:
        _train_shards(c, problems)
    weights = c.data.weights
    if weights and (c.data.source != "shards" or any(not w > 0 for w in weights)):
        problems.append(
            f"data.weights={tuple(weights)} must be positive, one per '::'-separated spec of "
            "data.train_shards (data.source='shards')"
        )
    _choice(problems, "data.mode", c.data.mode, ("epoch", "resampled"))
    if c.data.workers < 0:
        problems.append(f"data.workers={c.data.workers}; expected 0 (inline) or more")
    problems += check_skip_limits(c.data.max_skipped_fraction, c.data.sanity_samples)
    _attempt(problems, parse_keys, c.data.image_key)
    if c.data.text_key.split(".")[0] not in ("txt", "json"):
        problems.append(f"data.text_key={c.data.text_key!r}; expected 'txt' or 'json.<field>'")
    low, high = c.data.crop_scale
    if not 0 < low <= high <= 1:
        problems.append(
            f"data.crop_scale={tuple(c.data.crop_scale)} must satisfy 0 < lo <= hi <= 1"
        )
    if len(c.data.mean) != 3 or len(c.data.std) != 3 or min(c.data.std) <= 0:
        problems.append("data.mean and data.std need 3 values each, std positive")


def _optim_and_train(c, problems: list[str]) -> None:
    o = c.optim
    _choice(problems, "optim.name", o.name, OPTIMIZERS)
    _choice(problems, "optim.schedule", o.schedule, SCHEDULES)
    _positive(problems, "optim.lr", o.lr)
    _positive(problems, "train.steps", c.train.steps)
    _positive(problems, "train.batch_size", c.train.batch_size)
    _positive(problems, "train.log_every", c.train.log_every)
    if o.warmup_steps < 0 or o.warmup_steps >= c.train.steps:
        problems.append(
            f"optim.warmup_steps={o.warmup_steps} must be in [0, train.steps={c.train.steps})"
        )
    if o.schedule == "constant_cooldown" and o.warmup_steps + o.cooldown_steps > c.train.steps:
        problems.append("optim.warmup_steps + optim.cooldown_steps exceed train.steps")
    _attempt(problems, ObjectiveSpec.from_config(c).check)
    if c.loss.kind not in MULTI_KINDS:
        _attempt(problems, LossSpec.from_config(c.loss).check)
    if c.loss.kind == "sigmoid" and c.model.get("logit_bias_init") is None:
        problems.append("loss.kind='sigmoid' needs model.logit_bias_init (SigLIP uses -10.0)")
    if c.train.accum_steps < 1:
        problems.append(f"train.accum_steps={c.train.accum_steps} must be at least 1")
    problems += check_policy(c.train.on_nonfinite, c.train.max_skipped_in_a_row)
    problems += check_watchdog(c.train.stall_timeout, c.train.preemption_grace)
    if c.train.host_batch and c.data.source == "xor":
        problems.append("train.host_batch=True keeps images in host memory; this data has none")
    elif c.train.host_batch and c.data.image_size % 2:
        problems.append(
            f"train.host_batch=True packs pixels into 4-byte words: data.image_size="
            f"{c.data.image_size} must be even"
        )
    if c.train.host_batch and c.train.accum_steps < 2:
        problems.append(
            "train.host_batch=True streams micro-batches from host memory: set "
            "train.accum_steps to 2 or more"
        )


def _checkpoint(c, problems: list[str], reads_data: bool = True) -> None:
    k = c.checkpoint
    for field in ("every", "keep", "keep_period"):
        if k[field] < 0:
            problems.append(f"checkpoint.{field}={k[field]} must be >= 0")
    if not isinstance(k.async_save, bool):
        problems.append(f"checkpoint.async_save={k.async_save!r} must be true or false")
    init_from = c.get("init_from", "")
    if reads_data and init_from and "://" not in init_from and not Path(init_from).exists():
        problems.append(f"init_from={init_from!r} does not exist")


def _evals(c, problems: list[str]) -> None:
    for name, e in c.evals.items():
        if not isinstance(e, ml_collections.ConfigDict):
            problems.append(f"evals.{name} must be a group of fields (kind, source, ...)")
            continue
        unknown = sorted(set(e.keys()) - set(EVAL_DEFAULTS) - {"kind", "source"})
        if unknown:
            problems.append(
                f"evals.{name} has unknown fields {unknown}; expected kind, source and some "
                f"of {sorted(EVAL_DEFAULTS)}"
            )
        _choice(problems, f"evals.{name}.kind", e.get("kind"), EVAL_KINDS)
        _choice(problems, f"evals.{name}.source", e.get("source"), EVAL_SOURCES)
        if e.get("source") in ("clip_benchmark", "image_folder", "tfds") and not eval_field(
            e, "dataset_dir"
        ):
            problems.append(f"evals.{name}.source={e.source!r} needs evals.{name}.dataset_dir")
        if e.get("source") == "tfds" and not eval_field(e, "dataset_name"):
            problems.append(f"evals.{name}.source='tfds' needs evals.{name}.dataset_name")
        if eval_field(e, "every") < 0:
            problems.append(f"evals.{name}.every={e.every} must be >= 0 (0: at the last step only)")


def config_problems(
    c: ml_collections.ConfigDict, num_devices: int, num_processes: int, reads_data: bool = True
) -> list[str]:
    """Every problem of `c` for a run on `num_devices` in `num_processes`; without
    `reads_data` (compiling only) the training data and `init_from` need not exist."""
    problems: list[str] = []
    if not _types(c, problems):
        return problems  # the checks below do arithmetic on these fields
    _choice(problems, "model.name", c.model.get("name"), MODELS)
    if is_image_text(c):
        _model(c, problems)
        _text(c, problems)
        _data(c, problems, reads_data)
    else:
        _vector_model(c, problems)
    _optim_and_train(c, problems)
    _checkpoint(c, problems, reads_data)
    _evals(c, problems)
    problems += family_problems(c)
    _mesh_and_batch(c, num_devices, num_processes, problems)
    return problems


def eval_config_problems(c: ml_collections.ConfigDict, num_devices: int) -> list[str]:
    """What `clipjax eval` needs of a config: valid evals whose batches fit the mesh."""
    problems: list[str] = []
    if not c.get("evals"):
        return ["config.evals is empty: nothing to evaluate"]
    _evals(c, problems)
    _batches_divide(c, _eval_batches(c), num_devices, 1, problems)
    return problems

"""The `data` group's checks: field types, which fields each source uses, and that
shards, keys, streams and skip limits make sense (the data package's own rules)."""

from __future__ import annotations

from clipjax.data.augment import augment_problems
from clipjax.data.decode import check_resize, eval_resize_fields, parse_keys
from clipjax.data.loader import example_numbering, stream_range, train_sources
from clipjax.data.shards import check_openers
from clipjax.data.skips import check_skip_limits

IMAGE_TEXT_SOURCES = ("digits", "shards")
DATA_SOURCES = (*IMAGE_TEXT_SOURCES, "xor")

# The fields each source reads; any other field of `data` must be absent or None.
_IMAGE_TEXT_FIELDS = {
    "image_size": int,
    "shuffle_buffer": int,
    "workers": int,
    "max_skipped_fraction": float,
    "sanity_samples": int,
    "streams": int,
    "max_pixels": int,
    **{name: str for name in ("train_shards", "cache_dir", "image_key", "text_key", "mode")},
    **{name: tuple for name in ("weights", "mean", "std", "crop_scale")},
}
# Fields an older config.json may lack: absent means what ran then.
OPTIONAL_IMAGE_FIELDS = ("augment", "samples_per_shard", "eval_resize", "eval_interpolation")
SOURCE_FIELDS = {
    "digits": _IMAGE_TEXT_FIELDS,
    "shards": _IMAGE_TEXT_FIELDS,
    "xor": {"xor_bits": int, "xor_noise": float},
}


def _type_problems(data, types: dict[str, type]) -> list[str]:
    problems = []
    for name, expected in types.items():
        value = data.get(name)
        allowed = (
            (int, float) if expected is float else (tuple, list) if expected is tuple else expected
        )
        if value is None:
            problems.append(f"data.{name} is not set: expected {expected.__name__}")
        elif isinstance(value, bool) or not isinstance(value, allowed):
            problems.append(
                f"data.{name}={value!r} has type {type(value).__name__}, "
                f"expected {expected.__name__}"
            )
    return problems


def _unset(value) -> bool:
    return value is None or (isinstance(value, str | tuple | list) and not value)


def _unused(data, used) -> list[str]:
    unused = [k for k in sorted(data.keys()) if k not in used and not _unset(data[k])]
    if not unused:
        return []
    return [
        f"{', '.join('data.' + k for k in unused)} not used by data.source={data.source!r}: "
        f"remove from the config file or set --config.data.{unused[0]}="
        f"{repr('') if isinstance(data[unused[0]], str) else None} "
        f"(fields used: {', '.join(sorted(used))})"
    ]


def data_problems(data, batch_size: int, num_processes: int, reads_data: bool = True) -> list[str]:
    """Every problem of the `data` group for a global `batch_size` read by
    `num_processes`; without `reads_data` the training shards need not exist."""
    if data.get("source") not in DATA_SOURCES:
        return [f"data.source={data.get('source')!r} is not one of {DATA_SOURCES}"]
    fields = SOURCE_FIELDS[data.source]
    optional = set(OPTIONAL_IMAGE_FIELDS) if data.source in IMAGE_TEXT_SOURCES else set()
    used = {"source", *fields} | optional
    problems = _type_problems(data, fields) + _unused(data, used)
    if problems or data.source == "xor":
        return problems
    problems += augment_problems(data.get("augment"))
    problems += _samples_per_shard(data, reads_data)
    if data.source == "shards" and reads_data:
        problems += _train_shards(data)
    if data.weights and (data.source != "shards" or any(not w > 0 for w in data.weights)):
        problems.append(
            f"data.weights={tuple(data.weights)} must be positive, one per '::'-separated spec "
            "of data.train_shards (data.source='shards')"
        )
    if data.mode not in ("epoch", "resampled"):
        problems.append(f"data.mode={data.mode!r} is not one of ('epoch', 'resampled')")
    if data.workers < 0:
        problems.append(f"data.workers={data.workers}; expected 0 (inline) or more")
    problems += check_skip_limits(data.max_skipped_fraction, data.sanity_samples)
    problems += _decoding(data)
    if not isinstance(batch_size, int):
        return problems  # train.batch_size's own check names it
    return problems + _streams(data, batch_size, num_processes)


def _samples_per_shard(data, reads_data: bool) -> list[str]:
    value = data.get("samples_per_shard")
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return [
            f"data.samples_per_shard={value!r}: expected a positive int, the most samples "
            "any training shard holds (img2dataset's number_sample_per_shard)"
        ]
    if not reads_data:
        return []
    try:
        example_numbering(data)
    except ValueError as exc:
        return [str(exc)]
    return []


def _train_shards(data) -> list[str]:
    if not data.train_shards:
        return ["data.source='shards' needs data.train_shards (a brace spec of tar files)"]
    try:
        check_openers([url for urls in train_sources(data) for url in urls])
    except ValueError as exc:
        return [str(exc)]
    return []


def _decoding(data) -> list[str]:
    problems = []
    try:
        parse_keys(data.image_key)
    except ValueError as exc:
        problems.append(str(exc))
    if data.text_key.split(".")[0] not in ("txt", "json"):
        problems.append(f"data.text_key={data.text_key!r}; expected 'txt' or 'json.<field>'")
    low, high = data.crop_scale
    if not 0 < low <= high <= 1:
        problems.append(f"data.crop_scale={tuple(data.crop_scale)} must satisfy 0 < lo <= hi <= 1")
    if len(data.mean) != 3 or len(data.std) != 3 or min(data.std) <= 0:
        problems.append("data.mean and data.std need 3 values each, std positive")
    resize, interpolation = eval_resize_fields(data)
    problems += [f"data.{p}" for p in check_resize(resize, interpolation)]
    return problems


def _streams(data, batch_size: int, num_processes: int) -> list[str]:
    if data.streams < 0:
        return [f"data.streams={data.streams}; expected 0 (one per process) or more"]
    try:
        owned = stream_range(data.streams, 0, num_processes)
    except ValueError as exc:
        return [str(exc)]
    if batch_size % (len(owned) * num_processes):
        return [
            f"train.batch_size={batch_size} is not divisible by "
            f"data.streams={len(owned) * num_processes}"
        ]
    return []


TOKENIZER_FIELDS = {"kind": str, "context_length": int, "lowercase": bool, "path": str}


def tokenizer_problems(tokenizer_cfg):
    """(problems, the built tokenizer or None) of the `tokenizer` group."""
    from clipjax.data.tokenizers import build_tokenizer

    problems = []
    for name, expected in TOKENIZER_FIELDS.items():
        value = tokenizer_cfg.get(name)
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            problems.append(
                f"tokenizer.{name}={value!r} has type {type(value).__name__}, "
                f"expected {expected.__name__}"
            )
    unknown = sorted(set(tokenizer_cfg.keys()) - set(TOKENIZER_FIELDS))
    if unknown:
        problems.append(
            f"tokenizer has unknown fields {unknown}; expected {list(TOKENIZER_FIELDS)}"
        )
    if problems:
        return problems, None
    try:
        return [], build_tokenizer(tokenizer_cfg)
    except ValueError as exc:
        return [str(exc)], None

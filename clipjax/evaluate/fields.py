"""The fields of a `config.evals` entry, which kind and source read which, and their
checks (no heavy imports: config files and the config checks use it)."""

from __future__ import annotations

import ml_collections

from clipjax.data.decode import parse_keys
from clipjax.evaluate.sources import BATCH_KINDS, CLIP_BENCHMARK_IMAGE_KEYS, SOURCES

EVAL_KINDS = ("zeroshot", "retrieval", "linear_probe", "contrastive_loss")
EVAL_SOURCES = tuple(SOURCES)
# Optional fields of an eval entry and their defaults.
EVAL_DEFAULTS = dict(
    dataset_dir="",  # clip_benchmark dir | image folder | tfds data_dir
    dataset_name="",  # tfds name; also picks bundled class names/templates (cifar10, ...)
    split="test",  # image_folder: DIR/<split> when DIR has split folders
    train_split="train",  # linear_probe: the split the probe is fitted on
    train_limit=0,  # linear_probe: fit on the first N training samples; 0 = all
    templates_file="",  # one template per line with {c}; "" = the set's own or bundled
    classnames_file="",
    # clip_benchmark: the image members, first found is used (not the training data's)
    image_members=";".join(CLIP_BENCHMARK_IMAGE_KEYS),
    image_key="image",  # tfds features
    label_key="label",
    caption_key="",  # tfds retrieval sets
    limit=0,  # tfds: first N examples only; 0 = all
    shards="",  # contrastive_loss: held-out shards, a brace spec like data.train_shards
    batches=10,  # contrastive_loss: the fixed number of batches the loss is averaged over
    every=0,  # > 0: at step 0, every N steps and the last step; 0: the last step only
    batch_size=256,
)
_COMMON_FIELDS = ("split", "every", "batch_size")
KIND_FIELDS = {
    "zeroshot": ("templates_file", "classnames_file"),
    "retrieval": (),
    "linear_probe": ("train_split", "train_limit", "classnames_file"),
    "contrastive_loss": ("batches",),  # the same loss as training: batch_size matters
}


def eval_field(cfg, field: str):
    return cfg.get(field, EVAL_DEFAULTS[field])


def entry_fields(kind: str, source: str) -> tuple[str, ...]:
    """The optional fields an entry of `kind` from `source` reads."""
    return (*_COMMON_FIELDS, *KIND_FIELDS[kind], *SOURCES[source].fields)


def eval_entry(kind: str, source: str, **fields) -> ml_collections.ConfigDict:
    """An eval entry with every field its kind and source read (defaults where not
    given), so each can be overridden from the command line."""
    entry = ml_collections.ConfigDict(dict(kind=kind, source=source, **fields))
    _complete(entry)
    return entry


def _complete(entry: ml_collections.ConfigDict) -> None:
    if entry.get("kind") not in KIND_FIELDS or entry.get("source") not in SOURCES:
        return  # eval_problems names the bad kind or source
    with entry.unlocked():
        for field in entry_fields(entry.kind, entry.source):
            if field not in entry:
                entry[field] = EVAL_DEFAULTS[field]


def add_entries_from_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """Adds the eval entries that `--config.evals.NAME.FIELD=value` overrides name and
    the config lacks, each built from its `kind` and `source` overrides with every field
    its kind and source read (the other overrides then set them, in any order)."""
    evals = config.get("evals")
    if not isinstance(evals, ml_collections.ConfigDict):
        return
    given: dict[str, dict[str, str]] = {}
    for item in overrides:
        path, _, raw = item.partition("=")
        parts = path.split(".")
        if len(parts) == 3 and parts[0] == "evals" and parts[1] not in evals:
            given.setdefault(parts[1], {})[parts[2]] = raw.strip().strip("'\"")
    for name, fields in given.items():
        kind, source = fields.get("kind"), fields.get("source")
        if kind not in KIND_FIELDS or source not in SOURCES:
            raise ValueError(
                f"a new eval entry evals.{name} needs --config.evals.{name}.kind= one of "
                f"{EVAL_KINDS} and --config.evals.{name}.source= one of {EVAL_SOURCES} "
                f"(given kind={kind!r}, source={source!r})"
            )
        with evals.unlocked():
            evals[name] = eval_entry(kind, source)


def complete_evals(config: ml_collections.ConfigDict) -> None:
    """Gives every eval entry the fields its kind and source read, so each can be
    overridden from the command line and `config.json` records what ran."""
    evals = config.get("evals")
    if isinstance(evals, ml_collections.ConfigDict):
        for entry in evals.values():
            if isinstance(entry, ml_collections.ConfigDict):
                _complete(entry)


def drop_unread_defaults(config: ml_collections.ConfigDict) -> None:
    """Removes the fields an entry's kind and source do not read where they hold their
    default: what older `config.json` files record for every entry."""
    for entry in (config.get("evals") or {}).values():
        if entry.get("kind") in KIND_FIELDS and entry.get("source") in SOURCES:
            used = entry_fields(entry.kind, entry.source)
            for field in list(entry.keys()):
                if field not in used and entry[field] == EVAL_DEFAULTS.get(field, object()):
                    del entry[field]


def eval_problems(evals, reads_data: bool = True) -> list[str]:
    """Every problem of the `evals` group's entries; without `reads_data` (compiling
    only) an entry need not name its dataset yet."""
    problems = []
    for name, e in evals.items():
        if not isinstance(e, ml_collections.ConfigDict):
            problems.append(f"evals.{name} must be a group of fields (kind, source, ...)")
            continue
        kind, source = e.get("kind"), e.get("source")
        if kind not in EVAL_KINDS or source not in SOURCES:
            problems += [
                f"evals.{name}.{field}={value!r} is not one of {allowed}"
                for field, value, allowed in (
                    ("kind", kind, EVAL_KINDS),
                    ("source", source, EVAL_SOURCES),
                )
                if value not in allowed
            ]
            continue
        batch_pair = kind in BATCH_KINDS or source in BATCH_KINDS.values()
        if batch_pair and BATCH_KINDS.get(kind) != source:
            problems.append(
                f"evals.{name}: kind {kind!r} with source {source!r}; kind 'contrastive_loss' "
                "takes source 'shards' (held-out shards), and only it does"
            )
            continue
        problems += _entry_problems(name, e, kind, source, reads_data)
    return problems


def _entry_problems(name: str, e, kind: str, source: str, reads_data: bool) -> list[str]:
    used = entry_fields(kind, source)
    unknown = sorted(set(e.keys()) - set(used) - {"kind", "source"})
    problems = []
    if unknown:
        problems.append(
            f"evals.{name} has fields {unknown} that kind {kind!r} from source {source!r} "
            f"does not read; its fields: kind, source, {', '.join(used)}"
        )
    for field in SOURCES[source].needs if reads_data else ():
        if not eval_field(e, field):
            problems.append(f"evals.{name}.source={source!r} needs evals.{name}.{field}")
    for field in ("every", "batch_size", "limit", "batches", "train_limit"):
        value = eval_field(e, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"evals.{name}.{field}={value!r} must be an integer >= 0")
    if "image_members" in used:
        try:
            parse_keys(eval_field(e, "image_members"))
        except ValueError as exc:
            problems.append(f"evals.{name}.image_members: {exc}")
    for field in ("batch_size", "batches"):
        if eval_field(e, field) == 0:
            problems.append(f"evals.{name}.{field}=0 must be positive")
    return problems


def eval_batches(evals) -> list[tuple[str, int]]:
    """(field, size) of every entry's batch, for the mesh check."""
    return [
        (f"evals.{n}.batch_size", eval_field(e, "batch_size"))
        for n, e in evals.items()
        if isinstance(e, ml_collections.ConfigDict)
    ]

"""The fields of a `config.evals` entry (no heavy imports: the config loader uses it)."""

from __future__ import annotations

import ml_collections

EVAL_KINDS = ("zeroshot", "retrieval", "linear_probe")
EVAL_SOURCES = ("digits", "clip_benchmark", "image_folder", "tfds")
# Optional fields of an eval entry and their defaults.
EVAL_DEFAULTS = dict(
    dataset_dir="",  # clip_benchmark dir | image folder | tfds data_dir
    dataset_name="",  # tfds name; also picks bundled class names/templates (cifar10, ...)
    split="test",  # image_folder: DIR/<split> when DIR has split folders
    train_split="train",  # linear_probe: the split the probe is fitted on
    templates_file="",  # one template per line with {c}; "" = the set's own or bundled
    classnames_file="",
    image_key="image",  # tfds features
    label_key="label",
    caption_key="",  # tfds retrieval sets
    limit=0,  # tfds: first N examples only; 0 = all
    every=0,  # > 0: at step 0, every N steps and the last step; 0: the last step only
    batch_size=256,
)


def eval_field(cfg, field: str):
    return cfg.get(field, EVAL_DEFAULTS[field])


def complete_evals(config: ml_collections.ConfigDict) -> None:
    """Gives every eval entry all optional fields, so each can be overridden from the
    command line and `config.json` records what ran."""
    evals = config.get("evals")
    if not isinstance(evals, ml_collections.ConfigDict):
        return
    for entry in evals.values():
        if isinstance(entry, ml_collections.ConfigDict):
            with entry.unlocked():
                for field, default in EVAL_DEFAULTS.items():
                    if field not in entry:
                        entry[field] = default

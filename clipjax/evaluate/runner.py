"""Runs the config's `evals` (zero-shot, retrieval, linear probe) on given params.

Each entry of `config.evals` names a kind, a source and an interval:

    evals.NAME = dict(kind="zeroshot" | "retrieval" | "linear_probe",
                      source="digits" | "clip_benchmark" | "image_folder" | "tfds",
                      dataset_dir=..., every=N, batch_size=B, ...)

An entry with `every > 0` runs at step 0, every `every` steps and at the last
step; `every = 0` only at the last step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from clipjax.data.decode import ImageTransform, parse_keys
from clipjax.data.tokenizers import Tokenizer
from clipjax.data.writer import build_digits_shards
from clipjax.evaluate.assets import read_lines
from clipjax.evaluate.features import embed_all
from clipjax.evaluate.fields import EVAL_KINDS, EVAL_SOURCES, eval_field
from clipjax.evaluate.linear_probe import linear_probe
from clipjax.evaluate.retrieval import flatten_captions, retrieval_metrics
from clipjax.evaluate.sources import (
    CLASSNAMES_FILE,
    TEMPLATES_FILE,
    EvalSet,
    load_clip_benchmark,
    load_image_folder,
)
from clipjax.evaluate.tfds_source import load_tfds
from clipjax.evaluate.zeroshot import class_embeddings, classification_metrics
from clipjax.train.step import pixel_normalizer

log = logging.getLogger(__name__)


@dataclass
class EvalContext:
    """What every eval needs besides its data: encoders, tokenizer, placement."""

    encode_image: Callable[[np.ndarray], np.ndarray]
    encode_text: Callable[[np.ndarray], np.ndarray]
    tokenizer: Tokenizer
    sharding_for: Callable

    def images(self, images: np.ndarray, batch: int) -> np.ndarray:
        return embed_all(self.encode_image, images, batch, self.sharding_for)

    def texts(self, tokens: np.ndarray, batch: int) -> np.ndarray:
        return embed_all(self.encode_text, tokens, batch, self.sharding_for)


def load_split(name: str, cfg, data_cfg, split: str) -> EvalSet:
    """One split of the eval set `name` as decoded, normalised arrays."""
    transform = ImageTransform(data_cfg.image_size, data_cfg.mean, data_cfg.std, train=False)
    source = cfg.source
    templates = _optional_file(eval_field(cfg, "templates_file"))
    classnames = _optional_file(eval_field(cfg, "classnames_file"))
    max_pixels = data_cfg.max_pixels
    dataset_dir = eval_field(cfg, "dataset_dir")
    bundled = eval_field(cfg, "dataset_name") or name
    if source == "digits":
        shards = build_digits_shards(data_cfg.cache_dir or None, image_size=data_cfg.image_size)
        root = shards.retrieval_dir if cfg.kind == "retrieval" else shards.zeroshot_dir
        return load_clip_benchmark(
            root, "digits", transform, split, templates, classnames, max_pixels=max_pixels
        )
    if source == "clip_benchmark":
        keys = parse_keys(data_cfg.image_key)
        return load_clip_benchmark(
            dataset_dir, bundled, transform, split, templates, classnames, keys, max_pixels
        )
    if source == "image_folder":
        root = _image_folder_split(name, cfg, Path(dataset_dir), split)
        if root != Path(dataset_dir):  # the set's own files sit above its split folders
            classnames = classnames or _set_file(Path(dataset_dir) / CLASSNAMES_FILE)
            templates = templates or _set_file(Path(dataset_dir) / TEMPLATES_FILE)
        return load_image_folder(
            root, bundled, transform, templates, max_pixels, classnames=classnames
        )
    if source == "tfds":
        if not eval_field(cfg, "dataset_name"):
            raise ValueError(f"evals.{name}.source='tfds' needs evals.{name}.dataset_name")
        limit = eval_field(cfg, "limit")
        return load_tfds(
            bundled,
            dataset_dir,
            transform,
            split,
            eval_field(cfg, "image_key"),
            eval_field(cfg, "label_key"),
            eval_field(cfg, "caption_key") or None,
            templates,
            classnames,
            max_pixels,
            limit or None,
        )
    raise ValueError(f"evals.{name}.source={source!r}; expected one of {EVAL_SOURCES}")


SPLIT_FOLDERS = ("train", "val", "validation", "test")


def _image_folder_split(name: str, cfg, root: Path, split: str) -> Path:
    """`DIR/<split>` when DIR has split folders (a probe needs them), else DIR."""
    found = [s for s in SPLIT_FOLDERS if (root / s).is_dir()]
    if found or (root / split).is_dir():
        if not (root / split).is_dir():
            raise FileNotFoundError(f"evals.{name}: {root} has splits {found}, not {split!r}")
        return root / split
    if cfg.kind == "linear_probe":
        raise FileNotFoundError(
            f"evals.{name}: a linear probe needs {root}/{eval_field(cfg, 'train_split')} and "
            f"{root}/{split} (a subfolder per class in each); {root} has no split folders"
        )
    return root


def _set_file(path: Path) -> tuple[str, ...] | None:
    return read_lines(path) if path.is_file() else None


def _optional_file(path: str) -> tuple[str, ...] | None:
    return read_lines(Path(path)) if path else None


def _require(data: EvalSet, kind: str, name: str, what: str, present) -> None:
    if present is None:
        raise ValueError(f"evals.{name} (kind {kind!r}): the set {data.name!r} has no {what}")


@dataclass
class ZeroShotEval:
    kind = "zeroshot"
    name: str
    every: int
    batch_size: int
    data: EvalSet

    def metrics(self, ctx: EvalContext) -> dict[str, float]:
        classes = class_embeddings(
            lambda tokens: ctx.texts(tokens, self.batch_size),
            ctx.tokenizer,
            self.data.classnames,
            self.data.templates,
        )
        image = ctx.images(self.data.images, self.batch_size)
        return classification_metrics(image, classes, self.data.labels)


@dataclass
class RetrievalEval:
    kind = "retrieval"
    name: str
    every: int
    batch_size: int
    data: EvalSet

    def metrics(self, ctx: EvalContext) -> dict[str, float]:
        texts, owner = flatten_captions(self.data.captions)
        text = ctx.texts(ctx.tokenizer(texts), self.batch_size)
        image = ctx.images(self.data.images, self.batch_size)
        return retrieval_metrics(image, text, owner)


@dataclass
class LinearProbeEval:
    kind = "linear_probe"
    name: str
    every: int
    batch_size: int
    data: EvalSet
    train: EvalSet

    def metrics(self, ctx: EvalContext) -> dict[str, float]:
        train = ctx.images(self.train.images, self.batch_size)
        test = ctx.images(self.data.images, self.batch_size)
        return linear_probe(train, self.train.labels, test, self.data.labels)


def build_eval(name: str, cfg, data_cfg):
    """The eval entry `name` with its data loaded."""
    if cfg.kind not in EVAL_KINDS:
        raise ValueError(f"evals.{name}.kind={cfg.kind!r}; expected one of {EVAL_KINDS}")
    every, batch = eval_field(cfg, "every"), eval_field(cfg, "batch_size")
    data = load_split(name, cfg, data_cfg, eval_field(cfg, "split"))
    if data.skipped:
        log.warning("evals.%s: %d unreadable samples skipped", name, data.skipped)
    if cfg.kind == "retrieval":
        _require(data, cfg.kind, name, "captions", data.captions)
        return RetrievalEval(name, every, batch, data)
    _require(data, cfg.kind, name, "labels", data.labels)
    if cfg.kind == "zeroshot":
        return ZeroShotEval(name, every, batch, data)
    train = load_split(name, cfg, data_cfg, eval_field(cfg, "train_split"))
    _require(train, cfg.kind, name, "training labels", train.labels)
    if train.classnames != data.classnames:
        raise ValueError(
            f"evals.{name}: the {eval_field(cfg, 'train_split')!r} and "
            f"{eval_field(cfg, 'split')!r} splits have different classes"
        )
    return LinearProbeEval(name, every, batch, data, train)


def is_due(every: int, step: int, total_steps: int) -> bool:
    return step == total_steps or (every > 0 and step % every == 0)


def make_encoders(spec, param_shardings, data_cfg) -> tuple[Callable, Callable]:
    """Jitted `(params, x) -> embeddings` for both towers of the model in `spec`; the
    image encoder normalises uint8 crops with the data config's mean and std."""
    normalize = pixel_normalizer(data_cfg.mean, data_cfg.std)

    def encode_image(params, images):
        return nnx.merge(spec.graphdef, params).encode_image(normalize(images))

    def encode_text(params, tokens):
        return nnx.merge(spec.graphdef, params).encode_text(tokens)

    return tuple(
        jax.jit(fn, in_shardings=(param_shardings, None)) for fn in (encode_image, encode_text)
    )


class Evaluator:
    """Loads every configured eval set once; `run(params, step)` returns the metrics due."""

    def __init__(self, config, spec, tokenizer: Tokenizer, sharding_for: Callable, param_shardings):
        self.evals = [build_eval(name, cfg, config.data) for name, cfg in config.evals.items()]
        self.tokenizer = tokenizer
        self.sharding_for = sharding_for
        self.total_steps = config.train.steps
        self._encode_image, self._encode_text = make_encoders(spec, param_shardings, config.data)

    def due(self, step: int) -> bool:
        """Whether `run(params, step)` evaluates anything."""
        return any(is_due(ev.every, step, self.total_steps) for ev in self.evals)

    def run(self, params, step: int, force: bool = False) -> dict[str, float]:
        ctx = EvalContext(
            lambda x: self._encode_image(params, x),
            lambda x: self._encode_text(params, x),
            self.tokenizer,
            self.sharding_for,
        )
        metrics: dict[str, float] = {}
        for ev in self.evals:
            if force or is_due(ev.every, step, self.total_steps):
                for key, value in ev.metrics(ctx).items():
                    metrics[f"{ev.kind}/{ev.name}/{key}"] = value
        return metrics

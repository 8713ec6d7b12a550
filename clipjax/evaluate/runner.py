"""Runs the config's `evals` (zero-shot, retrieval, linear probe) on given params.

Each entry of `config.evals` names a kind, a source and an interval:

    evals.NAME = dict(kind="zeroshot" | "retrieval" | "linear_probe",
                      source="digits" | "clip_benchmark" | "image_folder" | "tfds",
                      dataset_dir=..., every=N, batch_size=B, ...)
    evals.NAME = dict(kind="contrastive_loss", source="shards", shards=SPEC, batches=N)

An entry with `every > 0` runs at step 0, every `every` steps and at the last
step; `every = 0` only at the last step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx

from clipjax.data.loader import to_global
from clipjax.data.pixels import pixel_normalizer
from clipjax.data.tokenizers import Tokenizer
from clipjax.evaluate.assets import check_templates
from clipjax.evaluate.features import embed_all, embed_stream
from clipjax.evaluate.fields import EVAL_KINDS, eval_field
from clipjax.evaluate.heldout import HeldOutShards, held_out_shards
from clipjax.evaluate.linear_probe import linear_probe
from clipjax.evaluate.retrieval import flatten_captions, retrieval_metrics
from clipjax.evaluate.sources import load_split
from clipjax.evaluate.sources.evalset import SourceContext
from clipjax.evaluate.sources.streamed import StreamedSet
from clipjax.evaluate.zeroshot import class_embeddings, classification_metrics

log = logging.getLogger(__name__)


@dataclass
class EvalContext:
    """What every eval needs besides its data: encoders, tokenizer, placement."""

    encode_image: Callable[[np.ndarray], np.ndarray]
    encode_text: Callable[[np.ndarray], np.ndarray]
    tokenizer: Tokenizer
    sharding_for: Callable
    batch_loss: Callable[[dict], dict] | None = None  # placed batch -> the objective's values

    def texts(self, tokens: np.ndarray, batch: int) -> np.ndarray:
        return embed_all(self.encode_text, tokens, batch, self.sharding_for)

    def images(self, data: StreamedSet, batch: int) -> tuple[np.ndarray, list]:
        """The image embeddings and targets of a streamed set, in its order, each
        process decoding its share a batch at a time."""
        count, index = jax.process_count(), jax.process_index()
        local = data.local_batches(batch // count, index, count)
        embeddings, targets = embed_stream(
            self.encode_image, local, batch, data.crop_shape, self.sharding_for
        )
        if not targets:
            raise ValueError(f"{data.where}: no readable sample (see the skips logged above)")
        return embeddings, targets


def _labels(data: StreamedSet, targets: list) -> np.ndarray:
    labels = np.asarray(targets, np.int64)
    data.check_labels(labels)
    return labels


def _require(data: StreamedSet, kind: str, name: str, wanted: str) -> None:
    if data.kind != wanted:
        raise ValueError(
            f"evals.{name} (kind {kind!r}): the set {data.name!r} is a {data.kind} set"
        )


@dataclass
class _Eval:
    """One configured eval: its entry name, interval, global batch and data."""

    name: str
    every: int
    batch_size: int
    data: StreamedSet


@dataclass
class ZeroShotEval(_Eval):
    kind = "zeroshot"

    def metrics(self, ctx: EvalContext) -> dict[str, float]:
        classes = class_embeddings(
            lambda tokens: ctx.texts(tokens, self.batch_size),
            ctx.tokenizer,
            self.data.classnames,
            check_templates(self.data.templates, self.data.name),
        )
        image, targets = ctx.images(self.data, self.batch_size)
        return classification_metrics(image, classes, _labels(self.data, targets))


@dataclass
class RetrievalEval(_Eval):
    kind = "retrieval"

    def metrics(self, ctx: EvalContext) -> dict[str, float]:
        image, captions = ctx.images(self.data, self.batch_size)
        texts, owner = flatten_captions(captions)
        text = ctx.texts(ctx.tokenizer(texts), self.batch_size)
        return retrieval_metrics(image, text, owner)


@dataclass
class LinearProbeEval(_Eval):
    kind = "linear_probe"
    train: StreamedSet

    def metrics(self, ctx: EvalContext) -> dict[str, float]:
        train, train_targets = ctx.images(self.train, self.batch_size)
        test, test_targets = ctx.images(self.data, self.batch_size)
        return linear_probe(
            train, _labels(self.train, train_targets), test, _labels(self.data, test_targets)
        )


@dataclass
class ValidationLossEval(_Eval):
    """The training objective, without masking, on a fixed set of held-out batches:
    each value the objective reports, averaged over the batches."""

    kind = "contrastive_loss"
    data: HeldOutShards

    def metrics(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.batch_loss is None:
            raise ValueError(f"evals.{self.name}: this run has no objective to evaluate")
        sums: dict[str, float] = {}
        for batch in self.data:
            values = jax.device_get(ctx.batch_loss(to_global(batch, ctx.sharding_for)))
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        return {key: total / self.data.batches for key, total in sums.items()}


def build_eval(
    name: str, cfg, data_cfg, tokenizer: Tokenizer | None = None, ctx: SourceContext | None = None
):
    """The eval entry `name` with its data opened, not read: its first samples are
    decoded as a check, the rest streams at each evaluation."""
    ctx = ctx or SourceContext.from_data_config(data_cfg)
    if cfg.kind not in EVAL_KINDS:
        raise ValueError(f"evals.{name}.kind={cfg.kind!r}; expected one of {EVAL_KINDS}")
    every, batch = eval_field(cfg, "every"), eval_field(cfg, "batch_size")
    if cfg.kind == "contrastive_loss":
        spec, batches = eval_field(cfg, "shards"), eval_field(cfg, "batches")
        data = held_out_shards(name, spec, batches, batch, data_cfg, tokenizer)
        return ValidationLossEval(name, every, batch, data)
    data = load_split(name, cfg, ctx, eval_field(cfg, "split"))
    data.check_readable()
    if cfg.kind == "retrieval":
        _require(data, cfg.kind, name, "retrieval")
        return RetrievalEval(name, every, batch, data)
    _require(data, cfg.kind, name, "classification")
    if cfg.kind == "zeroshot":
        return ZeroShotEval(name, every, batch, data)
    train = load_split(name, cfg, ctx, eval_field(cfg, "train_split"))
    train = train.first(eval_field(cfg, "train_limit"))
    train.check_readable()
    _require(train, cfg.kind, name, "classification")
    if train.classnames != data.classnames:
        raise ValueError(
            f"evals.{name}: the {eval_field(cfg, 'train_split')!r} and "
            f"{eval_field(cfg, 'split')!r} splits have different classes"
        )
    return LinearProbeEval(name, every, batch, data, train)


def is_due(every: int, step: int, total_steps: int) -> bool:
    return step == total_steps or (every > 0 and step % every == 0)


def make_encoders(
    spec, param_shardings, data_cfg, normalize: bool = True
) -> tuple[Callable, Callable]:
    """Jitted `(params, x) -> embeddings` for both towers of the model in `spec`; the
    image encoder normalises uint8 crops with the data config's mean and std.
    `normalize=False`: the embeddings before L2 normalisation."""
    to_floats = pixel_normalizer(data_cfg.mean, data_cfg.std)

    def encode_image(params, images):
        model = nnx.merge(spec.graphdef, params)
        embed = model.encode_image if normalize else model.image_features
        return embed(to_floats(images))

    def encode_text(params, tokens):
        model = nnx.merge(spec.graphdef, params)
        return (model.encode_text if normalize else model.text_features)(tokens)

    return tuple(
        jax.jit(fn, in_shardings=(param_shardings, None)) for fn in (encode_image, encode_text)
    )


class Evaluator:
    """Loads every configured eval set once; `run(params, step)` returns the metrics due."""

    def __init__(
        self,
        config,
        spec,
        tokenizer: Tokenizer,
        sharding_for: Callable,
        param_shardings,
        batch_loss: Callable | None = None,
    ):
        """`batch_loss(params, batch) -> {name: scalar}`: the training objective, for
        `contrastive_loss` entries (`clipjax.train.validation_loss`)."""
        # one eval crop for every entry, set up (and its fields checked) with the run
        ctx = SourceContext.from_data_config(config.data) if "image_size" in config.data else None
        self.evals = [
            build_eval(name, cfg, config.data, tokenizer, ctx) for name, cfg in config.evals.items()
        ]
        self.tokenizer = tokenizer
        self._batch_loss = batch_loss
        self.sharding_for = sharding_for
        self.total_steps = config.train.steps
        self._encode_image = self._encode_text = None
        if self.evals:  # a family without image and text towers (Symile) has no evals
            encoders = make_encoders(spec, param_shardings, config.data)
            self._encode_image, self._encode_text = encoders

    def due(self, step: int) -> bool:
        """Whether `run(params, step)` evaluates anything."""
        return any(is_due(ev.every, step, self.total_steps) for ev in self.evals)

    def run(self, params, step: int, force: bool = False) -> dict[str, float]:
        ctx = EvalContext(
            lambda x: self._encode_image(params, x),
            lambda x: self._encode_text(params, x),
            self.tokenizer,
            self.sharding_for,
            None if self._batch_loss is None else lambda batch: self._batch_loss(params, batch),
        )
        metrics: dict[str, float] = {}
        for ev in self.evals:
            if force or is_due(ev.every, step, self.total_steps):
                for key, value in ev.metrics(ctx).items():
                    metrics[f"{ev.kind}/{ev.name}/{key}"] = value
        return metrics

"""Runs the config's `evals` on the current parameters."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx

from clipjax.data.decode import ImageTransform, parse_keys
from clipjax.data.loader import labelled_images
from clipjax.data.shards import DataStats, SampleStream
from clipjax.data.tokenizers import Tokenizer
from clipjax.data.writer import build_digits_shards
from clipjax.evaluate.features import embed_all
from clipjax.evaluate.sources import ZeroShotSet, load_clip_benchmark_dir
from clipjax.evaluate.zeroshot import class_embeddings, classification_metrics
from clipjax.train.state import ModelSpec

log = logging.getLogger(__name__)

EVAL_KINDS = ("zeroshot",)
EVAL_SOURCES = ("digits", "clip_benchmark")


def resolve_zeroshot_set(name: str, eval_cfg, data_cfg) -> ZeroShotSet:
    if eval_cfg.source == "digits":
        shards = build_digits_shards(data_cfg.cache_dir or None, image_size=data_cfg.image_size)
        return load_clip_benchmark_dir(shards.zeroshot_dir, name)
    if eval_cfg.source == "clip_benchmark":
        return load_clip_benchmark_dir(eval_cfg.dataset_dir, name)
    raise ValueError(f"evals.{name}.source={eval_cfg.source!r}; expected one of {EVAL_SOURCES}")


@dataclass
class ZeroShotEval:
    name: str
    every: int
    batch_size: int
    dataset: ZeroShotSet
    images: np.ndarray
    labels: np.ndarray

    def due(self, step: int, total_steps: int) -> bool:
        return step == total_steps or (self.every > 0 and step % self.every == 0)

    def run(
        self,
        encode_image: Callable,
        encode_text: Callable,
        tokenizer: Tokenizer,
        sharding_for: Callable,
    ) -> dict[str, float]:
        def text(tokens: np.ndarray) -> np.ndarray:
            return embed_all(encode_text, tokens, self.batch_size, sharding_for)

        classes = class_embeddings(text, tokenizer, self.dataset.classnames, self.dataset.templates)
        image = embed_all(encode_image, self.images, self.batch_size, sharding_for)
        metrics = classification_metrics(image, classes, self.labels)
        return {f"zeroshot/{self.name}/{key}": value for key, value in metrics.items()}


class Evaluator:
    """Loads every configured eval set once; `run(params, step)` returns the metrics due."""

    def __init__(
        self, config, spec: ModelSpec, tokenizer: Tokenizer, sharding_for: Callable, param_shardings
    ):
        self.evals = [self._load(name, cfg, config.data) for name, cfg in config.evals.items()]
        self.tokenizer = tokenizer
        self.sharding_for = sharding_for
        self.total_steps = config.train.steps

        def encoder(method: str) -> Callable:
            return jax.jit(
                lambda params, x: getattr(nnx.merge(spec.graphdef, params), method)(x),
                in_shardings=(param_shardings, None),
            )

        self._encode_image = encoder("encode_image")
        self._encode_text = encoder("encode_text")

    @staticmethod
    def _load(name: str, cfg, data_cfg) -> ZeroShotEval:
        if cfg.kind not in EVAL_KINDS:
            raise ValueError(f"evals.{name}.kind={cfg.kind!r}; expected one of {EVAL_KINDS}")
        dataset = resolve_zeroshot_set(name, cfg, data_cfg)
        stream = SampleStream(list(dataset.shard_urls), seed=0, mode="once", shuffle_shards=False)
        transform = ImageTransform(data_cfg.image_size, data_cfg.mean, data_cfg.std, train=False)
        images, labels = labelled_images(
            stream, transform, parse_keys(data_cfg.image_key), data_cfg.max_pixels, DataStats()
        )
        return ZeroShotEval(name, cfg.every, cfg.batch_size, dataset, images, labels)

    def run(self, params, step: int, force: bool = False) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for ev in self.evals:
            if force or ev.due(step, self.total_steps):
                metrics.update(
                    ev.run(
                        lambda x: self._encode_image(params, x),
                        lambda x: self._encode_text(params, x),
                        self.tokenizer,
                        self.sharding_for,
                    )
                )
        return metrics

"""`clipjax eval`: the config's evals on a checkpoint or on imported weights, on all
devices of a mesh built from the config."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import jax
import ml_collections
import numpy as np

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class WeightsSource:
    """Where the params come from: a clipjax checkpoint, an HF directory or an
    open_clip state dict (with what its file cannot say, activation and head counts:
    from open_clip's model-config JSON or given)."""

    checkpoint: str = ""
    step: int | None = None
    hf: str = ""
    open_clip: str = ""
    open_clip_config: str = ""
    act: str | None = None
    image_heads: int | None = None
    text_heads: int | None = None

    def describe(self) -> str:
        return self.checkpoint or self.hf or self.open_clip


def checkpoint_config(checkpoint: str, evals_from: str | None) -> ml_collections.ConfigDict:
    """The run's own config; `evals_from` (a config file) replaces its `evals`."""
    from clipjax.checkpoint import run_config_json
    from clipjax.config import ConfigError, load_config
    from clipjax.evaluate.fields import complete_evals, drop_unread_defaults

    saved = run_config_json(checkpoint)
    if saved is None:
        raise ConfigError(
            f"no config.json beside {checkpoint} (a clipjax workdir has one); the model "
            "and data settings of the run are needed to evaluate it"
        )
    config = ml_collections.ConfigDict(json.loads(saved.read_text()))
    if evals_from:
        config.evals = load_config(evals_from).evals
    drop_unread_defaults(config)  # runs before 2026-12 gave every entry every field
    complete_evals(config)
    config.lock()
    return config


def check_flags(args) -> None:
    """Refuses flags that do not apply to the weights given."""
    if args.step is not None and not args.checkpoint:
        raise ValueError("--step applies to --checkpoint only")
    given = [
        f
        for f in ("open_clip_config", "act", "image_heads", "text_heads")
        if getattr(args, f) is not None
    ]
    if given and not args.open_clip:
        flags = ", ".join("--" + f.replace("_", "-") for f in given)
        raise ValueError(f"{flags} apply to --open-clip only (an HF config.json says them)")


def check_config(config: ml_collections.ConfigDict, imported: bool) -> None:
    """The evals fit the devices, and imported weights get a tokenizer that fits them."""
    from clipjax.config import ConfigError
    from clipjax.validation import eval_config_problems

    problems = eval_config_problems(config, jax.device_count())
    if imported:
        problems += imported_tokenizer_problems(config)
    if problems:
        raise ConfigError("cannot evaluate:\n  - " + "\n  - ".join(problems))


def imported_tokenizer_problems(config: ml_collections.ConfigDict) -> list[str]:
    """Why CLIP BPE (what imports get by default) cannot tokenize for the imported
    text tower, if it cannot."""
    from clipjax.models.presets import CLIP_VOCAB

    text = config.model.text
    if config.tokenizer.kind != "clip":
        return []
    problems = []
    if text.vocab_size != CLIP_VOCAB:
        problems.append(
            f"the imported text tower has {text.vocab_size} token ids, not CLIP BPE's "
            f"{CLIP_VOCAB}: set --config.tokenizer.kind and --config.tokenizer.path to "
            "the tokenizer it was trained with"
        )
    if text.pool == "eos" and text.eos_id != CLIP_VOCAB - 1:
        problems.append(
            f"the imported text tower ends sequences with id {text.eos_id}, not CLIP BPE's "
            f"{CLIP_VOCAB - 1}: set --config.tokenizer.* to its tokenizer"
        )
    return problems


def imported_params(config: ml_collections.ConfigDict, source: WeightsSource) -> dict:
    """Imports HF/open_clip weights: sets `config.model` (and the image size, OpenAI's
    normalisation and CLIP BPE tokenizer that go with them); returns unrolled params."""
    from clipjax.interop.hf_clip import load_hf_clip
    from clipjax.interop.open_clip import load_open_clip

    if source.hf:
        model_cfg, params = load_hf_clip(source.hf, config.model)
    else:
        model_cfg, params = load_open_clip(
            source.open_clip,
            config.model,
            source.open_clip_config or None,
            source.act,
            source.image_heads,
            source.text_heads,
        )
    adopt_imported_model(config, model_cfg)
    return params


def adopt_imported_model(config: ml_collections.ConfigDict, model_cfg) -> None:
    """`config` with an imported model and the image size, OpenAI normalisation and
    CLIP BPE tokenizer that go with OpenAI-style weights."""
    with config.unlocked():
        config.model = model_cfg
        config.data.image_size = model_cfg.image.image_size
        config.data.mean, config.data.std = OPENAI_MEAN, OPENAI_STD
        config.tokenizer.kind = "clip"
        config.tokenizer.path = ""
        config.tokenizer.context_length = model_cfg.text.context_length


def evaluate(
    config: ml_collections.ConfigDict,
    source: WeightsSource,
    imported: dict | None = None,
    make_batch_loss: Callable | None = None,
) -> dict[str, float]:
    """Runs every entry of `config.evals` (forced, whatever its interval) once.
    `make_batch_loss(config, mesh, spec, param_shardings)` gives the training objective
    for `contrastive_loss` entries (`clipjax.train.validation_loss`; the caller passes
    it, evaluate does not import train)."""
    from clipjax.checkpoint import load_params
    from clipjax.data.tokenizers import build_tokenizer
    from clipjax.evaluate.runner import Evaluator
    from clipjax.interop.params_tree import abstract_params, fill_params
    from clipjax.models.spec import model_spec
    from clipjax.parallel import batch_sharding, build_mesh, param_shardings, rules_table

    mesh = build_mesh(config.mesh)
    rules = rules_table(config.sharding_rules)
    spec = model_spec(config.model)
    abstract = abstract_params(config.model)
    shardings = param_shardings(spec.logical_specs, abstract, mesh, rules)
    if imported is not None:
        tree = fill_params(abstract, imported, source.describe())
        params = jax.device_put(jax.tree.map(np.asarray, tree), shardings)
    else:
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        params = load_params(source.checkpoint, target, source.step)

    def sharding_for(ndim: int):
        return batch_sharding(mesh, rules, ndim)

    tokenizer = build_tokenizer(config.tokenizer)
    batch_loss = None if make_batch_loss is None else make_batch_loss(config, mesh, spec, shardings)
    evaluator = Evaluator(config, spec, tokenizer, sharding_for, shardings, batch_loss)
    return evaluator.run(params, config.train.steps, force=True)

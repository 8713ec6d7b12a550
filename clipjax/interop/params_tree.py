"""Flat `name -> array` params in the unrolled layout, and the model's own tree.

Importers produce names like `image/encoder/blocks/3/attn/query/kernel`; a model
with scanned layers keeps one `image/encoder/blocks/attn/query/kernel` with the
layer on a leading axis. These helpers convert between the two and fill the
model's (abstract) parameter tree, naming whatever is missing or mis-shaped.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from clipjax.checkpoint import flat_params

_UNROLLED = re.compile(r"^(.*/blocks)/(\d+)/(.*)$")


def unroll_layers(flat: dict[str, np.ndarray], stacked: set[str]) -> dict[str, np.ndarray]:
    """Splits every `stacked` name (`.../blocks/x`) into `.../blocks/i/x`, one per layer."""
    out = {}
    for name, value in flat.items():
        if name in stacked:
            prefix, rest = name.split("/blocks/", 1)
            for layer, slab in enumerate(value):
                out[f"{prefix}/blocks/{layer}/{rest}"] = slab
        else:
            out[name] = value
    return out


def stack_layers(flat: dict[str, np.ndarray], stacked: set[str]) -> dict[str, np.ndarray]:
    """The inverse of `unroll_layers`: `.../blocks/i/x` for all i becomes `.../blocks/x`."""
    groups: dict[str, dict[int, np.ndarray]] = {}
    out = {}
    for name, value in flat.items():
        match = _UNROLLED.match(name)
        target = f"{match.group(1)}/{match.group(3)}" if match else None
        if target in stacked:
            groups.setdefault(target, {})[int(match.group(2))] = value
        else:
            out[name] = value
    for target, layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"layers of {target} are not 0..n-1: {sorted(layers)}")
        out[target] = np.stack([layers[i] for i in range(len(layers))])
    return out


def is_stacked_name(name: str) -> bool:
    """Whether `name` is a scanned (layer-stacked) parameter: `.../blocks/x`, no layer."""
    return "/blocks/" in name and not _UNROLLED.match(name)


def stacked_names(abstract_params: Any) -> set[str]:
    """Names of the model's scanned (layer-stacked) parameters."""
    return {name for name in _shapes(abstract_params) if is_stacked_name(name)}


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_name(path): tuple(leaf.shape) for path, leaf in leaves}


def _name(path) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)


def fill_params(abstract_params: Any, unrolled: dict[str, np.ndarray], source: str) -> Any:
    """The model's parameter tree with every leaf taken from `unrolled` (cast to the
    leaf's dtype); a name missing on either side or a shape mismatch is an error."""
    flat = stack_layers(unrolled, stacked_names(abstract_params))
    shapes = _shapes(abstract_params)
    missing = sorted(set(shapes) - set(flat))
    extra = sorted(set(flat) - set(shapes))
    wrong = [
        f"{n}: {source} {tuple(flat[n].shape)}, model {shapes[n]}"
        for n in shapes
        if n in flat and tuple(flat[n].shape) != shapes[n]
    ]
    problems = (
        [f"missing from {source}: {n}" for n in missing]
        + [f"not in the model: {n}" for n in extra]
        + wrong
    )
    if problems:
        raise ValueError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))

    def take(path, leaf):
        return np.asarray(flat[_name(path)], dtype=leaf.dtype)

    return jax.tree_util.tree_map_with_path(take, abstract_params)


def unrolled_params(params: Any) -> dict[str, np.ndarray]:
    """A model's params (any layout) as flat unrolled host arrays."""
    flat = flat_params(params)
    return unroll_layers(flat, stacked_names(params))


def abstract_params(model_cfg) -> Any:
    """The model's parameter tree as ShapeDtypeStructs; nothing allocated."""
    from flax import nnx

    from clipjax.models import build_model

    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.split(model)[1])


def build_with_params(model_cfg, unrolled: dict[str, np.ndarray], source: str):
    """An nnx model of `model_cfg` holding the given (unrolled, flat) params."""
    from flax import nnx

    from clipjax.models import build_model

    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: build_model(model_cfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    tree = fill_params(nnx.to_pure_dict(state), unrolled, source)
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, tree))
    return nnx.merge(graphdef, state)

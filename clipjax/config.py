"""Config files: load `file.py[:variant]`, apply CLI overrides, save (the checks are
`clipjax.validation`'s).

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict`. The
returned config is locked, so overriding a field that does not exist fails
with the list of fields that do.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.py"


class ConfigError(ValueError):
    """A config file, override or field combination is invalid."""


def load_config(spec: str | None = None) -> ml_collections.ConfigDict:
    """Loads `path/to/file.py[:variant]`; None means the embedded default."""
    path_text, _, variant = (spec or str(DEFAULT_CONFIG)).partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (expected a .py file)")
    module_spec = importlib.util.spec_from_file_location(f"_clipjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(path)!r} defines no get_config(arg=None)")
    config = module.get_config(variant or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"get_config in {str(path)!r} returned {type(config).__name__}, expected ConfigDict"
        )
    config.lock()
    return config


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _coerce(path: str, old: Any, new: Any) -> Any:
    """Returns `new` converted to the type of `old`, or raises ConfigError."""
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
    elif isinstance(old, float):
        if isinstance(new, int | float) and not isinstance(new, bool):
            return float(new)
    elif isinstance(old, str):
        return str(new)
    elif isinstance(old, tuple | list):
        if isinstance(new, tuple | list):
            return type(old)(new)
    elif isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{path} is a group of fields; override its fields instead")
    else:
        return new
    raise ConfigError(
        f"--config.{path}={new!r} has type {type(new).__name__}, "
        f"expected {type(old).__name__} (current value {old!r})"
    )


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Applies `a.b=value` overrides in place (the leading `--config.` stripped)."""
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} has no '=': expected --config.a.b=value")
        *parents, leaf = path.split(".")
        node = config
        for depth, name in enumerate(parents):
            node = _child(node, name, ".".join(parents[: depth + 1]))
        if leaf not in node:
            raise ConfigError(_unknown_field(path, node))
        old = node[leaf]
        # A string field takes the text as written ("none" stays "none", not None).
        parsed = _unquote(raw) if isinstance(old, str) else _parse_value(raw)
        value = _coerce(path, old, parsed)
        with node.ignore_type():
            node[leaf] = value


def _child(node: ml_collections.ConfigDict, name: str, path: str) -> ml_collections.ConfigDict:
    if name not in node:
        raise ConfigError(_unknown_field(path, node))
    child = node[name]
    if not isinstance(child, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{path} is a value, not a group of fields")
    return child


def _unknown_field(path: str, node: ml_collections.ConfigDict) -> str:
    known = ", ".join(sorted(node.keys()))
    return f"unknown config field {path!r}; fields at that level: {known}"


def save_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """Writes the resolved config to `workdir/config.json`."""
    path = Path(workdir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
    return path

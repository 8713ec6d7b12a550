"""Small helpers the subsystems' config checks share: each returns readable problems.

A field a choice does not use (the ViT's `patch_size` under an EfficientNet tower,
Adam's `eps` under Lion) must be absent or None: `unused_fields` names it, what
made it unused, and how to drop it from the command line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def lookup(group, path: str):
    """The value at dotted `path` under `group`, or None where any part is missing."""
    value = group
    for name in path.split("."):
        value = value.get(name) if hasattr(value, "get") else None
    return value


def type_ok(value, expected: type) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    allowed = (int, float) if expected is float else (expected,)
    return not isinstance(value, bool) and isinstance(value, allowed)


def type_problems(group, prefix: str, types: Mapping[str, type], optional: bool = False):
    """`prefix.field=value has type X, expected Y` for each field of `types` under `group`
    (ints pass for floats); with `optional`, a missing or None field passes."""
    problems = []
    for path, expected in types.items():
        value = lookup(group, path)
        if optional and value is None:
            continue
        if value is None:
            problems.append(f"{prefix}.{path} is not set: expected {expected.__name__}")
        elif not type_ok(value, expected):
            problems.append(
                f"{prefix}.{path}={value!r} has type {type(value).__name__}, "
                f"expected {expected.__name__}"
            )
    return problems


def choice(field: str, value, allowed: Iterable) -> list[str]:
    allowed = tuple(allowed)
    return [] if value in allowed else [f"{field}={value!r} is not one of {allowed}"]


def positive(field: str, value) -> list[str]:
    return [] if value > 0 else [f"{field}={value!r} must be positive"]


def is_unset(value) -> bool:
    """None, or an empty string or sequence: a field left at "not given"."""
    return value is None or (isinstance(value, str | tuple | list) and not value)


def unused_fields(group, prefix: str, used: Iterable[str], because: str) -> list[str]:
    """A problem for each field of `group` outside `used` that is set (`is_unset`)."""
    used = set(used)
    unused = [k for k in sorted(group.keys()) if k not in used and not is_unset(group[k])]
    if not unused:
        return []
    full = [f"{prefix}.{k}" if prefix else k for k in unused]
    names = ", ".join(full)
    blank = "''" if isinstance(group[unused[0]], str) else "None"
    return [
        f"{names} {'is' if len(unused) == 1 else 'are'} not used {because}: remove "
        f"{'it' if len(unused) == 1 else 'them'} from the config file or set "
        f"--config.{full[0]}={blank}{'' if len(unused) == 1 else ' (and the others)'} "
        f"(fields used: {', '.join(sorted(used))})"
    ]

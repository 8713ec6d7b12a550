"""Orbax checkpoints: train state, per-process loader state, resharded restore.

A checkpoint is a `CheckpointManager` step directory holding two items:
`state` (step, params, optimizer state; written by every process for its
shards, asynchronously) and `loader` (one JSON file per process with that
process's data position). Orbax writes each step under a temporary name and
renames it when complete, so a process killed mid-save leaves the previous
checkpoints intact and the partial one is never picked up.

Restores build their targets from the *current* mesh's shardings, so a
checkpoint restores onto any mesh shape or device count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

STATE, LOADER = "state", "loader"


class LoaderStateMissing(FileNotFoundError):
    """The checkpoint holds no loader state for this process (e.g. the process count changed)."""


def _loader_file() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class LoaderStateHandler(ocp.handlers.CheckpointHandler):
    """Each process writes its own streams' positions as one JSON file."""

    def save(self, directory: epath.Path, args: LoaderStateSave) -> None:
        (directory / _loader_file()).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: LoaderStateRestore | None = None) -> dict:
        """Every process's streams merged, so a run on another process count finds its own."""
        files = sorted(directory.glob("process_*-of-*.json"))
        if not files:
            raise LoaderStateMissing(f"no process_*-of-*.json in {directory}")
        merged: dict = {"streams": None, "states": {}}
        for path in files:
            saved = json.loads(path.read_text())
            if "states" not in saved:
                raise LoaderStateMissing(f"{path} holds no per-stream data position")
            merged["streams"] = saved["streams"]
            merged["states"].update(saved["states"])
            merged.update({k: v for k, v in saved.items() if k not in ("streams", "states")})
        return merged


@ocp.args.register_with_handler(LoaderStateHandler, for_save=True)
@dataclasses.dataclass
class LoaderStateSave(ocp.args.CheckpointArgs):
    state: dict


@ocp.args.register_with_handler(LoaderStateHandler, for_restore=True)
@dataclasses.dataclass
class LoaderStateRestore(ocp.args.CheckpointArgs):
    pass


def _absolute(path: str | Path) -> epath.Path:
    text = str(path)
    return epath.Path(text if "://" in text else Path(text).absolute())


@dataclasses.dataclass
class Restored:
    step: int
    state: dict  # {"step", "params", "opt_state"} as saved
    loader: dict | None  # this process's loader state; None if it has none


class Checkpoints:
    """Saves every `every` steps (and when forced), keeps the last `keep` plus every
    `keep_period`-th, and restores the latest complete one."""

    def __init__(
        self,
        directory: str | Path,
        *,
        every: int,
        keep: int = 3,
        keep_period: int = 0,
        async_save: bool = True,
    ):
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            # Orbax's default also saves the first step; `every` alone is what users expect.
            save_decision_policy=policies.AnySavePolicy(
                [
                    policies.FixedIntervalPolicy(max(every, 1)),
                    policies.PreemptionCheckpointingPolicy(),
                ]
            ),
            max_to_keep=keep or None,
            keep_period=keep_period or None,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.directory = _absolute(directory)  # Orbax's tensorstore paths must be absolute
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.every = every

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def reached(self, step: int) -> bool:
        """`jax.distributed`'s preemption sync point: True on every process at one step."""
        return self.manager.reached_preemption(step)

    def due(self, step: int) -> bool:
        """Whether `save(step, ...)` writes a checkpoint without `force`."""
        return self.every > 0 and self.manager.should_save(step)

    def save(self, step: int, state: dict, loader: dict | None, force: bool = False) -> bool:
        """Starts a save if `step` is due (or `force`); returns whether it started."""
        if not force and not self.due(step):
            return False
        args = {STATE: ocp.args.StandardSave(state)}
        if loader is not None:
            args[LOADER] = LoaderStateSave(loader)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, step: int, target: dict) -> Restored:
        """Restores `step` into `target` (ShapeDtypeStructs with the current shardings)."""
        state = self.manager.restore(
            step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)})
        )[STATE]
        loader = None
        if LOADER in self._items(step):
            try:
                loader = self.manager.restore(
                    step, args=ocp.args.Composite(**{LOADER: LoaderStateRestore()})
                )[LOADER]
            except LoaderStateMissing as exc:
                log.warning("checkpoint %d: %s; the data stream starts afresh", step, exc)
        return Restored(step, state, loader)

    def _items(self, step: int) -> list[str]:
        return [p.name for p in (self.directory / str(step)).iterdir() if p.is_dir()]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def resolve_step_dir(path: str | Path, step: int | None = None) -> tuple[epath.Path, int]:
    """A checkpoints directory (latest or `step`) or one step directory -> (root, step)."""
    path = _absolute(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if (path / STATE).is_dir():
        return path.parent, int(path.name)
    if (path / "checkpoints").is_dir() and not _steps(path):
        path = path / "checkpoints"
    steps = _steps(path)
    if not steps:
        raise FileNotFoundError(
            f"{path} holds no complete checkpoint (expected numbered step directories "
            f"with a '{STATE}' item)"
        )
    if step is None:
        return path, max(steps)
    if step not in steps:
        raise FileNotFoundError(f"{path} has no checkpoint for step {step}; it has {steps}")
    return path, step


def run_config_json(path: str | Path) -> Path | None:
    """The `config.json` of the run whose workdir, `checkpoints/` or step directory
    `path` is (a `clipjax convert` export keeps one beside its params too)."""
    path = Path(path).absolute()
    candidates = [path]
    if path.name == "checkpoints":
        candidates.append(path.parent)
    if path.parent.name == "checkpoints":
        candidates.append(path.parent.parent)
    return next((c / "config.json" for c in candidates if (c / "config.json").is_file()), None)


def _steps(path: epath.Path) -> list[int]:
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / STATE).is_dir())


def _params_metadata(state_dir: epath.Path) -> Any:
    metadata = ocp.StandardCheckpointHandler().metadata(state_dir)
    tree = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
    return tree["params"]


def load_params(
    path: str | Path, target: Any, step: int | None = None, parts: Sequence[str] = ()
) -> Any:
    """Only the params of a checkpoint, restored into `target`'s shapes and shardings.

    `parts`: only these top-level groups (e.g. `("image",)` for LiT's tower), the rest
    of `target` is neither read nor returned. A parameter missing from either side or
    with another shape is an error that names it; the optimizer state in the
    checkpoint is never read.
    """
    root, step = resolve_step_dir(path, step)
    return _restore_params(root / str(step) / STATE, target, tuple(parts))


def _restore_params(state_dir: epath.Path, target: Any, parts: tuple[str, ...] = ()) -> Any:
    saved = _params_metadata(state_dir)
    if parts:
        missing = [p for p in parts if p not in saved or p not in target]
        if missing:
            raise ValueError(
                f"params groups {missing} are not in both {state_dir.parent} "
                f"(has {sorted(saved)}) and this model (has {sorted(target)})"
            )
        saved = {p: saved[p] for p in parts}
        target = {p: target[p] for p in parts}
    _check_same_shapes(saved, target, str(state_dir.parent))
    item = {"params": target}
    restored = ocp.PyTreeCheckpointHandler().restore(
        state_dir,
        args=ocp.args.PyTreeRestore(
            item=item,
            restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True,
        ),
    )
    return restored["params"]


def _check_same_shapes(saved: Any, target: Any, where: str) -> None:
    saved_flat = _flat(saved)
    target_flat = _flat(target)
    problems = [
        f"{name}: checkpoint {tuple(saved_flat[name].shape)}, model {tuple(t.shape)}"
        for name, t in target_flat.items()
        if name in saved_flat and tuple(saved_flat[name].shape) != tuple(t.shape)
    ]
    problems += [f"{name}: missing from the checkpoint" for name in target_flat.keys() - saved_flat]
    problems += [f"{name}: not in this model" for name in saved_flat.keys() - target_flat]
    if problems:
        raise ValueError(f"params in {where} do not fit this model:\n  " + "\n  ".join(problems))


def _is_array_leaf(x: Any) -> bool:
    """Arrays, ShapeDtypeStructs and Orbax array metadata (all have a shape)."""
    return hasattr(x, "shape") and not isinstance(x, dict)


def _flat(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_array_leaf)[0]
    return {"/".join(_key(k) for k in path): leaf for path, leaf in leaves}


def _key(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flat_params(params: Any) -> dict[str, np.ndarray]:
    """`{"image/blocks/0/attn/query/kernel": array, ...}` on the host."""
    return {name: np.asarray(jax.device_get(value)) for name, value in _flat(params).items()}


def read_params(path: str | Path, step: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """All params of a checkpoint on this host, flattened by name, whatever mesh wrote it."""
    root, step = resolve_step_dir(path, step)
    state_dir = root / str(step) / STATE
    device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
        _params_metadata(state_dir),
        is_leaf=_is_array_leaf,
    )
    return flat_params(_restore_params(state_dir, target)), step

"""Device mesh from the config, logical-axis rules, and batch placement (of inputs, and
of activations inside a training step).

Mesh axes are `data`, `fsdp` and `tensor`. Parameters carry logical axis
names (`embed`, `mlp`, `heads`, ...); the config's `sharding_rules` maps each
logical name to a mesh axis (or a tuple of them, or None for replicated).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None


def axis_tuple(axes: MeshAxes | Sequence[str]) -> tuple[str, ...]:
    """`"data"`, `("data", "fsdp")` or None as a tuple of mesh axis names."""
    return (axes,) if isinstance(axes, str) else tuple(axes or ())


def resolve_mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fills in the one `-1` axis; raises if the shape does not use every device exactly."""
    sizes = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
    wildcard = [axis for axis, size in sizes.items() if size == -1]
    bad = [f"{a}={s}" for a, s in sizes.items() if s == 0 or s < -1]
    if bad or len(wildcard) > 1:
        raise ValueError(
            f"mesh {sizes} is invalid: each axis must be a positive size, and at most one -1"
        )
    known = math.prod(size for size in sizes.values() if size != -1)
    if wildcard:
        if num_devices % known:
            raise ValueError(
                f"mesh {sizes} does not fit {num_devices} devices: the fixed axes multiply "
                f"to {known}, which does not divide {num_devices}"
            )
        sizes[wildcard[0]] = num_devices // known
    elif known != num_devices:
        raise ValueError(
            f"mesh {sizes} has {known} devices but {num_devices} are available; "
            "set one axis to -1 to use them all"
        )
    return sizes


def build_mesh(
    mesh_config: Mapping[str, int], devices: Sequence | None = None, whole_slice: bool = False
) -> Mesh:
    """A `data x fsdp x tensor` mesh over `devices` (default: all devices); with
    `whole_slice`, `devices` are a whole slice of another backend (a TPU topology)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    auto = (AxisType.Auto,) * len(MESH_AXES)
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1:
        return _multi_slice_mesh(sizes, devices, slices, auto)
    if whole_slice or len(devices) == len(jax.devices()):  # JAX orders them for the topology
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def _multi_slice_mesh(sizes: dict[str, int], devices: Sequence, slices: int, axis_types) -> Mesh:
    """Slices joined over the data-center network: `data` spans them (its gradient
    all-reduce is the only traffic between slices), every other axis stays in a slice."""
    from jax.experimental import mesh_utils

    if sizes["data"] % slices:
        raise ValueError(
            f"mesh.data={sizes['data']} must be a multiple of the {slices} slices: the data "
            "axis spans the slices"
        )
    within = (sizes["data"] // slices, sizes["fsdp"], sizes["tensor"])
    grid = mesh_utils.create_hybrid_device_mesh(within, (slices, 1, 1), devices)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


def rules_table(rules: Sequence[Sequence]) -> dict[str, MeshAxes]:
    """The config's `((logical, mesh_axes), ...)` as a dict, checked."""
    table: dict[str, MeshAxes] = {}
    for entry in rules:
        if len(entry) != 2:
            raise ValueError(f"sharding rule {entry!r} must be (logical_name, mesh_axes)")
        name, axes = entry
        names = axis_tuple(axes)
        unknown = [a for a in names if a not in MESH_AXES]
        if unknown:
            raise ValueError(
                f"sharding rule for {name!r} names mesh axes {unknown}; "
                f"expected some of {MESH_AXES}"
            )
        table[name] = tuple(axes) if isinstance(axes, list | tuple) else axes
    return table


def logical_to_mesh(logical: P, rules: Mapping[str, MeshAxes]) -> P:
    """Maps a spec of logical names to mesh axes; a mesh axis is used at most once."""
    used: set[str] = set()
    out = []
    for name in logical:
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        axes = rules[name]
        names = tuple(a for a in axis_tuple(axes) if a not in used)
        used.update(names)
        out.append(names[0] if len(names) == 1 else (names or None))
    return P(*out)


def axis_size(mesh: Mesh, axes: MeshAxes) -> int:
    return math.prod(mesh.shape[a] for a in axis_tuple(axes))


def batch_axes(rules: Mapping[str, MeshAxes]) -> MeshAxes:
    return rules.get("batch")


def batch_sharding(mesh: Mesh, rules: Mapping[str, MeshAxes], ndim: int) -> NamedSharding:
    """Leading dimension over the batch axes, the rest replicated."""
    return NamedSharding(mesh, P(batch_axes(rules), *([None] * (ndim - 1))))


def param_shardings(logical_specs, shapes, mesh: Mesh, rules: Mapping[str, MeshAxes]):
    """NamedShardings for a pytree of logical specs, checking every dimension divides."""

    def one(path, logical: P, shape) -> NamedSharding:
        spec = logical_to_mesh(logical, rules)
        for dim, (size, axes) in enumerate(zip(shape.shape, spec, strict=False)):
            if size % axis_size(mesh, axes):
                name = jax.tree_util.keystr(path)
                raise ValueError(
                    f"parameter {name} of shape {shape.shape}: dimension {dim} ({size}) is not "
                    f"divisible by mesh axes {axes} of size {axis_size(mesh, axes)}"
                )
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(
        one, logical_specs, shapes, is_leaf=lambda x: isinstance(x, P)
    )


_ACTIVATION_BATCH: ContextVar[tuple[Mesh, MeshAxes, MeshAxes] | None] = ContextVar(
    "activation_batch", default=None
)


@contextmanager
def activations_on_batch_axes(mesh: Mesh, axes: MeshAxes, heads: MeshAxes = None) -> Iterator[None]:
    """While a step is traced inside this, `constrain_to_batch` pins activations' leading
    dimension to the batch `axes` of `mesh`.

    Without it XLA's sharding propagation may follow an FSDP weight (its `embed`
    dimension sharded over `fsdp`) into the activations and gather the batch instead of
    the weight: ViT-L/14 at global batch 32,768 on 256 v5e chips with `fsdp=256` then
    asks for 618 GiB of temporaries per chip, every chip holding the whole batch.
    `heads`: the mesh axes attention heads are split over (kernels XLA cannot
    partition are mapped over them, see `step_partitioning`)."""
    token = _ACTIVATION_BATCH.set((mesh, axes, heads))
    try:
        yield
    finally:
        _ACTIVATION_BATCH.reset(token)


def constrain_to_batch(x: jax.Array) -> jax.Array:
    """`x` with its leading dimension sharded over the enclosing step's batch axes (see
    `activations_on_batch_axes`) and the rest replicated; unchanged outside a step
    (evaluation, export), where the caller's shardings stand."""
    active = _ACTIVATION_BATCH.get()
    if active is None:
        return x
    mesh, axes, _ = active
    spec = P(axes, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def step_partitioning() -> tuple[Mesh, MeshAxes, MeshAxes] | None:
    """(mesh, batch axes, heads axes) of the step being traced, or None outside one."""
    return _ACTIVATION_BATCH.get()


def batch_split_problems(
    mesh_config: Mapping[str, int],
    rules: Sequence[Sequence],
    batches: Sequence[tuple[str, int]],
    num_devices: int,
    num_processes: int,
) -> tuple[list[str], int | None]:
    """(problems, data-parallel size): whether the mesh fits `num_devices` and each
    `(field, size)` batch splits over its batch axes and the processes."""
    try:
        sizes = resolve_mesh_shape(mesh_config, num_devices)
        names = axis_tuple(rules_table(rules).get("batch"))
    except ValueError as exc:
        return [str(exc)], None
    data_parallel = math.prod(sizes[a] for a in names)
    problems = []
    for field, size in batches:
        if size % data_parallel:
            problems.append(
                f"{field}={size} is not divisible by the data-parallel size {data_parallel} "
                f"(mesh {sizes}, batch sharded over {names})"
            )
        elif size % num_processes:
            problems.append(f"{field}={size} is not divisible by {num_processes} processes")
    return problems, data_parallel

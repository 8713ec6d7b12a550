import jax
import pytest
from jax.sharding import PartitionSpec as P

from clipjax.parallel import build_mesh, logical_to_mesh, resolve_mesh_shape, rules_table

RULES = rules_table(
    (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("kv", None))
)


def test_wildcard_axis_takes_the_remaining_devices():
    assert resolve_mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == {
        "data": 2,
        "fsdp": 2,
        "tensor": 2,
    }


def test_two_wildcards_are_rejected():
    with pytest.raises(ValueError, match="at most one -1"):
        resolve_mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)


def test_logical_names_map_to_mesh_axes_once():
    assert logical_to_mesh(P("embed", "mlp"), RULES) == P("fsdp", "tensor")
    assert logical_to_mesh(P("batch", "embed"), RULES) == P(("data", "fsdp"), None)
    assert logical_to_mesh(P("kv", None), RULES) == P(None, None)
    with pytest.raises(ValueError, match="logical axis 'vocab' has no sharding rule"):
        logical_to_mesh(P("vocab"), RULES)


def test_unknown_mesh_axis_in_rules():
    with pytest.raises(ValueError, match=r"names mesh axes \['model'\]"):
        rules_table((("embed", "model"),))


def test_mesh_on_a_subset_of_devices():
    mesh = build_mesh({"data": 1, "fsdp": 2, "tensor": 1}, jax.devices()[:2])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 1}

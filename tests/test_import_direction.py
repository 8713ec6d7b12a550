"""Which subsystem may import which, read from the source (every import statement,
also those inside functions)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "clipjax"


def clipjax_imports(path: Path) -> set[str]:
    """The clipjax modules `path` imports anywhere in its body."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n == "clipjax" or n.startswith("clipjax.")}


def modules_under(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def test_the_scan_sees_function_level_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from clipjax.train.step import x\n")
    assert "clipjax.train.step" in clipjax_imports(source)


@pytest.mark.parametrize("path", modules_under("evaluate"), ids=lambda p: p.name)
def test_evaluate_does_not_import_train(path):
    assert not {n for n in clipjax_imports(path) if n.startswith("clipjax.train")}


@pytest.mark.parametrize("path", modules_under("data"), ids=lambda p: p.name)
def test_data_imports_only_itself(path):
    outside = {n for n in clipjax_imports(path) if not n.startswith("clipjax.data")}
    assert outside == set()


def test_config_loading_imports_no_subsystem():
    assert clipjax_imports(PACKAGE / "config.py") == set()


@pytest.mark.parametrize(
    "checks", ["data/checks.py", "models/checks.py", "losses/checks.py", "train/checks.py"]
)
def test_each_subsystem_checks_only_its_own_fields(checks):
    """A subsystem's checks import from their own package and the shared field helpers."""
    own = "clipjax." + checks.split("/")[0]
    imported = clipjax_imports(PACKAGE / checks)
    assert {n for n in imported if not n.startswith((own, "clipjax.fieldcheck"))} == set()

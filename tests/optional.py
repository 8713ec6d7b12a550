"""Optional test dependencies (torch, transformers): skipped where absent, except
where CI sets CLIPJAX_REQUIRE_TORCH=1, so the parity tests can never skip there."""

import importlib
import os

import pytest


def require(module: str):
    if os.environ.get("CLIPJAX_REQUIRE_TORCH") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{module} is not installed (pip extra 'interop')")

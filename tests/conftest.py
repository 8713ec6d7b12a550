"""Tests run on 8 simulated CPU devices; set before jax is imported anywhere."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the session and the training subprocesses it
# starts: the same tiny programs are compiled by many tests and restarted processes.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="clipjax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax
import pytest

from clipjax.config import load_config
from clipjax.data.writer import build_digits_shards


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory):
    """One copy of the bundled-digits shards for the whole test session."""
    root = tmp_path_factory.mktemp("cache")
    build_digits_shards(root)
    return root


@pytest.fixture
def tiny_config(digits_cache):
    config = load_config("configs/default.py:tiny")
    config.data.cache_dir = str(digits_cache)
    return config


def pytest_configure(config):
    assert len(jax.devices()) == 8, "tests expect 8 simulated CPU devices"

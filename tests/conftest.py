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


TRAINED_STEPS = 300


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, digits_cache):
    """A tiny ViT (4-px patches: an 8x8 grid at 32 px) trained on the digits, and an
    export of it."""
    work = tmp_path_factory.mktemp("load") / "run"
    from clipjax.cli import main

    code = main(
        [
            "train",
            "--config",
            "configs/default.py:tiny",
            "--workdir",
            str(work),
            f"--config.data.cache_dir={digits_cache}",
            f"--config.train.steps={TRAINED_STEPS}",
            "--config.train.log_every=100",
            "--config.optim.warmup_steps=10",
            "--config.model.image.patch_size=4",
        ]
    )
    assert code == 0
    assert main(["convert", "--checkpoint", str(work), "--out", str(work.parent / "x")]) == 0
    return work


def pytest_configure(config):
    assert len(jax.devices()) == 8, "tests expect 8 simulated CPU devices"

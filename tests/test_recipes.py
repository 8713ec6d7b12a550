"""The published pod recipes: each cites its source, names a target topology it passes
the config checks on, trains in bf16 for a data budget in samples, requires the
ImageNet eval's directory, and its `:smoke` variant trains on a CPU."""

import importlib.util
import logging
import math
from pathlib import Path

import jax
import pytest

from clipjax.aot.topology import parse_topology
from clipjax.config import ConfigError, apply_overrides, load_config
from clipjax.recipes import OPENAI_CLIP, host_workers
from clipjax.train.loop import note_budget, train
from clipjax.validation import validate

RECIPES = {  # file: (global batch, samples seen, cited source)
    "configs/clip/vit_b32.py": (32_768, 12_800_000_000, "Radford et al. 2021"),
    "configs/clip/vit_b16.py": (32_768, 12_800_000_000, "Radford et al. 2021"),
    "configs/clip/vit_l14.py": (32_768, 12_800_000_000, "Radford et al. 2021"),
    "configs/siglip/vit_b16.py": (32_768, 40_000_000_000, "Zhai et al. 2023"),
    "configs/align/efficientnet_b3.py": (16_384, 1_200_000 * 16_384, "Jia et al. 2021"),
    "configs/lit/vit_b16.py": (16_384, 200_000_000, "Zhai et al. 2022"),
    "configs/coca/base.py": (65_536, 500_000 * 65_536, "Yu et al. 2022"),
}


def _module(path: str):
    spec = importlib.util.spec_from_file_location("recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _for_topology(path: str):
    config = load_config(path)
    topology = parse_topology(_module(path).TOPOLOGY)
    if config.model.get("frozen"):
        config.init_from = "/runs/clip_b16/checkpoints"  # LiT's tower (need not exist)
    return config, topology


@pytest.mark.parametrize("path", RECIPES)
def test_a_recipe_cites_its_source_and_passes_the_checks_on_its_topology(path):
    batch, samples, source = RECIPES[path]
    text = Path(path).read_text()
    assert source in text and "Source:" in text
    config, topology = _for_topology(path)
    assert config.train.batch_size == batch and config.train.samples_seen == samples
    assert config.train.steps == math.ceil(samples / batch)
    assert (config.model.dtype, config.model.param_dtype) == ("bfloat16", "float32")
    assert config.model.attention == "auto" and config.model.scan_layers
    devices = len(topology.devices())
    # data workers own whole streams: every host of the topology gets several
    assert config.data.workers == host_workers() and config.data.streams % topology.hosts == 0
    assert config.data.streams // topology.hosts >= 4
    validate(config, devices, topology.hosts, reads_data=False)  # `clipjax compile`
    with pytest.raises(ConfigError, match=r"needs evals\.imagenet\.dataset_dir"):
        validate(config, devices, topology.hosts)  # `clipjax train`


def test_the_schedule_follows_the_data_budget_and_an_explicit_step_count_wins(caplog):
    config = load_config("configs/clip/vit_b16.py")
    apply_overrides(config, ["train.batch_size=65536"])
    assert config.train.steps == 12_800_000_000 // 65536 + 1  # rounded up
    apply_overrides(config, ["train.samples_seen=6553600"])
    assert config.train.steps == 100
    with caplog.at_level(logging.WARNING):
        note_budget(config.train)
    assert caplog.text == ""
    apply_overrides(config, ["train.steps=7"])
    assert config.train.steps == 7 and config.train.samples_seen == 6553600
    with caplog.at_level(logging.WARNING):
        note_budget(config.train)
    assert "training 458,752 samples (train.steps=7 x train.batch_size=65536)" in caplog.text


def test_warmup_and_linear_decay_follow_the_steps():
    coca = load_config("configs/coca/base.py")
    assert coca.optim.warmup_steps == 10_000 and coca.optim.cooldown_steps == 490_000  # 2%
    apply_overrides(coca, ["train.samples_seen=65536000"])
    assert (coca.optim.warmup_steps, coca.optim.cooldown_steps) == (20, 980)


def test_host_workers_leave_two_cores_and_stay_in_range():
    assert [host_workers(n) for n in (1, 2, 8, 96, 240)] == [1, 1, 6, 32, 32]


def test_openai_numbers():
    assert (OPENAI_CLIP.weight_decay, OPENAI_CLIP.warmup_steps) == (0.2, 2000)
    assert (OPENAI_CLIP.b2, OPENAI_CLIP.eps) == (0.98, 1e-6)


# CLIP's smoke variant here; the slow stage's config walk trains every smoke variant
# (shrunk further, 2 steps), and LiT's here too: it needs a locked tower to load
SMOKES = ["configs/clip/vit_b16.py", pytest.param("configs/lit/vit_b16.py", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def tiny_tower(tmp_path_factory, digits_cache) -> str:
    """CLIP ViT-B/16's smoke run (the tiny towers, scanned): the checkpoint LiT's smoke
    variant locks."""
    config = load_config("configs/clip/vit_b16.py:smoke")
    apply_overrides(
        config, [f"data.cache_dir={digits_cache}", "train.steps=2", "optim.warmup_steps=1"]
    )
    workdir = tmp_path_factory.mktemp("tower")
    train(config, workdir, devices=jax.devices()[:1])
    return str(workdir / "checkpoints")


@pytest.mark.parametrize("path", SMOKES)
def test_the_smoke_variant_trains_on_a_cpu(path, tmp_path, digits_cache, request):
    config = load_config(f"{path}:smoke")
    overrides = [f"data.cache_dir={digits_cache}"]
    if config.model.get("frozen"):
        overrides.append(f"init_from={request.getfixturevalue('tiny_tower')}")
    apply_overrides(config, overrides)
    recipe = load_config(path)
    assert config.optim.name == recipe.optim.name and config.loss.kind == recipe.loss.kind
    assert config.model.dtype == "bfloat16" and config.model.remat == "full"
    result = train(config, tmp_path, devices=jax.devices()[:1])  # a CPU: one device
    assert result.steps == 6 and all(math.isfinite(x) for x in result.losses)
    assert "zeroshot/digits/top1" in result.final_metrics

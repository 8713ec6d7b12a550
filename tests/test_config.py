import json

import pytest

from clipjax.cli import _split_overrides, main
from clipjax.config import ConfigError, apply_overrides, load_config, save_config
from clipjax.validation import validate


def test_variant_and_overrides_apply_with_types():
    config = load_config("configs/default.py:tiny")
    assert config.train.steps == 8
    apply_overrides(
        config,
        [
            "train.steps=5",
            "optim.lr=1",
            "model.image.act=quick_gelu",
            "data.crop_scale=(0.5, 1.0)",
            "tokenizer.lowercase=false",
        ],
    )
    assert config.train.steps == 5
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.model.image.act == "quick_gelu"
    assert tuple(config.data.crop_scale) == (0.5, 1.0)
    assert config.tokenizer.lowercase is False
    apply_overrides(config, ["model.remat=none", "data.text_key='json.caption'"])
    assert config.model.remat == "none" and config.data.text_key == "json.caption"
    apply_overrides(config, ["model.logit_bias_init=-10"])  # a None field takes a literal
    assert config.model.logit_bias_init == -10


def test_cli_splits_both_override_spellings():
    rest, overrides = _split_overrides(
        ["train", "--config.train.steps=3", "--workdir", "w", "--config.optim.lr", "0.1"]
    )
    assert rest == ["train", "--workdir", "w"]
    assert overrides == ["train.steps=3", "optim.lr=0.1"]


def test_unknown_field_names_the_field_and_its_siblings():
    config = load_config(None)
    with pytest.raises(ConfigError, match=r"unknown config field 'train.stepz'.*steps"):
        apply_overrides(config, ["train.stepz=3"])
    with pytest.raises(ConfigError, match=r"unknown config field 'modle'"):
        apply_overrides(config, ["modle.embed_dim=3"])


def test_wrong_type_is_rejected_with_expected_type():
    config = load_config(None)
    with pytest.raises(ConfigError, match=r"train.steps='many' has type str, expected int"):
        apply_overrides(config, ["train.steps=many"])
    with pytest.raises(ConfigError, match=r"expected bool"):
        apply_overrides(config, ["tokenizer.lowercase=3"])


def test_unknown_variant_and_missing_file():
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        load_config("configs/default.py:huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.py")


def test_batch_not_divisible_by_data_parallel_size():
    config = load_config(None)
    apply_overrides(config, ["train.batch_size=12"])
    with pytest.raises(
        ConfigError,
        match=r"train.batch_size=12 is not divisible by the "
        r"data-parallel size 8",
    ):
        validate(config, num_devices=8)


def test_mesh_that_does_not_fit_the_devices():
    config = load_config(None)
    apply_overrides(config, ["mesh.data=3"])
    with pytest.raises(ConfigError, match=r"has 3 devices but 8 are available"):
        validate(config, num_devices=8)
    config = load_config(None)
    apply_overrides(config, ["mesh.fsdp=3"])
    with pytest.raises(ConfigError, match=r"fixed axes multiply to 3, which does not divide 8"):
        validate(config, num_devices=8)


def test_inconsistent_fields_are_all_listed():
    config = load_config(None)
    apply_overrides(
        config,
        [
            "data.image_size=28",
            "optim.name=sgd",
            "model.text.heads=5",
            "optim.warmup_steps=10000",
            "tokenizer.context_length=20",
            "data.eval_resize=crop",
            "data.eval_interpolation=lanczos",
        ],
    )
    with pytest.raises(ConfigError) as info:
        validate(config, num_devices=1)
    message = str(info.value)
    for expected in (
        "model.image.image_size=32 differs from data.image_size=28",
        "optim.name='sgd' is not one of",
        "model.text.width=128 is not divisible by heads=5",
        "optim.warmup_steps=10000 must be in",
        "tokenizer.context_length=20 differs from model.text.context_length=32",
        "data.eval_resize='crop' is not one of ('shortest', 'longest', 'squash')",
        "data.eval_interpolation='lanczos' is not one of ('bicubic', 'bilinear')",
    ):
        assert expected in message


def test_cli_reports_config_errors_before_compiling(capsys, tmp_path):
    code = main(["train", "--workdir", str(tmp_path), "--config.train.batch_size=7"])
    assert code == 2
    assert "train.batch_size=7 is not divisible" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resolved_config_is_saved(tmp_path):
    config = load_config("configs/default.py:tiny")
    path = save_config(config, tmp_path)
    saved = json.loads(path.read_text())
    assert saved["train"]["steps"] == 8
    assert saved["model"]["image"]["patch_size"] == config.model.image.patch_size


def test_wrong_type_set_by_a_config_file_is_caught_by_validation():
    config = load_config(None)
    with config.ignore_type():  # what a file building its own ConfigDict can produce
        config.train.steps = "1000"
        config.model.image.width = 12.5
    with pytest.raises(ConfigError) as info:
        validate(config, num_devices=1)
    assert "train.steps='1000' has type str, expected int" in str(info.value)
    assert "model.image.width=12.5 has type float, expected int" in str(info.value)

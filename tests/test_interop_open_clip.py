"""OpenCLIP import against a committed fixture written by open_clip itself
(tests/fixtures/make_open_clip_fixture.py): no torch needed here."""

import json
from pathlib import Path

import numpy as np
import pytest

from clipjax.config import load_config
from clipjax.interop.open_clip import check_plain_clip, load_open_clip
from clipjax.interop.params_tree import build_with_params
from clipjax.interop.state_dicts import read_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "open_clip_small"


CONFIG = FIXTURE / "open_clip_config.json"


def _embeddings(model_cfg, params):
    expected = np.load(FIXTURE / "expected.npz")
    model = build_with_params(model_cfg, params, "fixture")
    image = np.asarray(model.image(expected["pixels"].transpose(0, 2, 3, 1)))
    return image, np.asarray(model.text(expected["tokens"])), model


@pytest.mark.parametrize("scan", [False, True])
def test_open_clip_import_matches_open_clip_embeddings(scan):
    expected = np.load(FIXTURE / "expected.npz")
    base = load_config("configs/default.py").model
    base.scan_layers = scan
    model_cfg, params = load_open_clip(FIXTURE / "model.safetensors", base, config=CONFIG)
    assert (model_cfg.image.width, model_cfg.image.depth, model_cfg.image.heads) == (64, 2, 2)
    assert (model_cfg.text.vocab_size, model_cfg.text.context_length) == (256, 12)
    assert model_cfg.text.heads == 1 and model_cfg.image.act == "quick_gelu"
    assert model_cfg.image.image_size == 32 and model_cfg.embed_dim == 32
    image, text, model = _embeddings(model_cfg, params)
    np.testing.assert_allclose(image, expected["image"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(text, expected["text"], atol=1e-5, rtol=0)
    assert float(np.abs(expected["text"]).max()) > 0.1
    assert float(model.logit_scale[...]) == pytest.approx(float(expected["logit_scale"]))


def test_explicit_settings_equal_the_config():
    base = load_config("configs/default.py").model
    setup = json.loads((FIXTURE / "setup.json").read_text())
    given = load_open_clip(
        FIXTURE / "model.safetensors", base, act="quick_gelu", image_heads=2, text_heads=1
    )
    from_config = load_open_clip(FIXTURE / "model.safetensors", base, config=CONFIG)
    assert setup["image_heads"] == 2
    assert given[0].to_dict() == from_config[0].to_dict()


def test_wrong_head_count_changes_the_embeddings():
    """Heads are not in the weights, and a wrong count still gives finite (wrong)
    embeddings: why the import refuses to guess."""
    expected = np.load(FIXTURE / "expected.npz")
    base = load_config("configs/default.py").model
    model_cfg, params = load_open_clip(
        FIXTURE / "model.safetensors", base, act="quick_gelu", image_heads=1, text_heads=1
    )
    image, _, _ = _embeddings(model_cfg, params)
    assert np.abs(image - expected["image"]).max() > 1e-3


def test_missing_or_contradicted_settings_are_refused(tmp_path):
    base = load_config("configs/default.py").model
    weights = FIXTURE / "model.safetensors"
    with pytest.raises(
        ValueError, match=r"does not store image_heads, text_heads, act .*config JSON"
    ):
        load_open_clip(weights, base)
    with pytest.raises(ValueError, match=r"does not store text_heads \(image width 64"):
        load_open_clip(weights, base, act="gelu", image_heads=2)
    with pytest.raises(ValueError, match=r"image tower: 3 heads do not split width 64"):
        load_open_clip(weights, base, act="gelu", image_heads=3, text_heads=1)
    with pytest.raises(ValueError, match=r"image_heads=1 but the config says 2"):
        load_open_clip(weights, base, config=CONFIG, image_heads=1)
    with pytest.raises(ValueError, match=r"act='gelu' but the config says 'quick_gelu'"):
        load_open_clip(weights, base, config=CONFIG, act="gelu")
    config = json.loads(CONFIG.read_text())
    other = {**config, "vision_cfg": {**config["vision_cfg"], "width": 768, "layers": 12}}
    with pytest.raises(ValueError, match=r"vision_cfg.width: config 768, weights 64"):
        load_open_clip(weights, base, config=other)
    odd = {**config, "text_cfg": {**config["text_cfg"], "ls_init_value": 1e-5}, "x": 1}
    with pytest.raises(ValueError, match=r"unknown field 'x'\n  text_cfg.ls_init_value=1e-05"):
        load_open_clip(weights, base, config=odd)
    (tmp_path / "c.json").write_text("{")
    with pytest.raises(ValueError, match=r"c.json is not JSON"):
        load_open_clip(weights, base, config=tmp_path / "c.json")
    with pytest.raises(FileNotFoundError, match=r"nothing.json does not exist"):
        load_open_clip(weights, base, config=tmp_path / "nothing.json")


def test_unsupported_state_dicts_are_named(tmp_path):
    from safetensors.numpy import save_file

    state = read_state_dict(FIXTURE / "model.safetensors")
    base = load_config("configs/default.py").model
    with pytest.raises(ValueError, match=r"no visual.conv1.weight"):
        check_plain_clip({"visual.trunk.x": np.zeros(1)})
    state["visual.attn_pool.query"] = np.zeros((1, 64), np.float16)
    save_file(state, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"does not use: \['visual.attn_pool.query'\]"):
        load_open_clip(tmp_path / "extra.safetensors", base, config=CONFIG)
    with pytest.raises(ValueError, match=r"unknown state dict format '.npz'"):
        read_state_dict(FIXTURE / "expected.npz")
    with pytest.raises(FileNotFoundError, match=r"nothing.safetensors"):
        read_state_dict(tmp_path / "nothing.safetensors")


def test_torch_bin_files_load_with_weights_only(tmp_path):
    from optional import require

    torch = require("torch")
    state = read_state_dict(FIXTURE / "model.safetensors")
    torch.save(
        {
            "state_dict": {
                f"module.{k}": torch.tensor(v.astype(np.float32)) for k, v in state.items()
            }
        },
        tmp_path / "ckpt.pt",
    )
    loaded = read_state_dict(tmp_path / "ckpt.pt")
    assert sorted(loaded) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(loaded[name], value.astype(np.float32))

    import argparse  # any class outside torch's allow-list stands for arbitrary pickle

    torch.save({"x": argparse.Namespace(a=1)}, tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        read_state_dict(tmp_path / "pickle.pt")


def test_bfloat16_safetensors_are_read_as_float32(tmp_path):
    import ml_dtypes
    from safetensors.numpy import save_file

    values = np.array([1.0, -2.5, 3.0], np.float32)
    save_file({"w": values.astype(ml_dtypes.bfloat16)}, str(tmp_path / "bf16.safetensors"))
    got = read_state_dict(tmp_path / "bf16.safetensors")["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, values)

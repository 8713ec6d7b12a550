"""HF transformers SigLIP import/export: embeddings equal PyTorch's at two shapes,
the export loads back into transformers, and `clipjax.load` reads the directory."""

import json

import numpy as np
import pytest
from optional import require
from test_interop_hf import _torch_features  # CLIPModel and SiglipModel alike

import clipjax
from clipjax.config import load_config
from clipjax.interop.hf_siglip import (
    hf_siglip_config_from_model,
    load_hf_siglip,
    model_config_from_hf_siglip,
    save_hf_siglip,
)
from clipjax.interop.params_tree import build_with_params

SHAPES = {
    # name: (vision width, heads, depth, image size, patch, text width, heads, depth, context)
    "small": (48, 3, 2, 32, 8, 48, 4, 2, 12),
    "wide_text": (64, 4, 1, 28, 7, 32, 2, 3, 9),
}


def _hf_model(tmp_path, name: str):
    torch, transformers = require("torch"), require("transformers")
    vw, vh, vd, size, patch, tw, th, td, context = SHAPES[name]
    config = transformers.SiglipConfig(
        text_config=dict(
            vocab_size=77,
            hidden_size=tw,
            intermediate_size=tw * 2,
            num_hidden_layers=td,
            num_attention_heads=th,
            max_position_embeddings=context,
            projection_size=vw,
        ),
        vision_config=dict(
            hidden_size=vw,
            intermediate_size=vw * 3,
            num_hidden_layers=vd,
            num_attention_heads=vh,
            image_size=size,
            patch_size=patch,
        ),
    )
    torch.manual_seed(0)
    model = transformers.SiglipModel(config).eval()
    with torch.no_grad():  # every weight random, layer norms included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model


def _inputs(name: str):
    _, _, _, size, _, _, _, _, context = SHAPES[name]
    rng = np.random.default_rng(1)
    pixels = rng.normal(size=(3, 3, size, size)).astype(np.float32)
    tokens = np.ones((3, context), np.int64)  # SigLIP pads with id 1 to the full length
    for row, length in enumerate((3, context, 5)):
        tokens[row, :length] = rng.integers(2, 77, size=length)
    return pixels, tokens


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_siglip_import_matches_pytorch(tmp_path, name, scan):
    reference = _hf_model(tmp_path, name)
    base = load_config("configs/default.py").model
    base.scan_layers = scan
    model_cfg, params = load_hf_siglip(tmp_path, base)
    assert model_cfg.image.ln_eps == model_cfg.text.ln_eps == 1e-6
    model = build_with_params(model_cfg, params, str(tmp_path))
    pixels, tokens = _inputs(name)
    want_image, want_text = _torch_features(reference, pixels, tokens)
    got_image = np.asarray(model.image(pixels.transpose(0, 2, 3, 1)))
    got_text = np.asarray(model.text(tokens))
    np.testing.assert_allclose(got_image, want_image, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_text, want_text, atol=1e-5, rtol=0)
    assert min(np.abs(want_image).max(), np.abs(want_text).max()) > 0.1
    assert float(model.logit_scale[...]) == pytest.approx(float(reference.logit_scale.detach()))
    assert float(model.logit_bias[...]) == pytest.approx(float(reference.logit_bias.detach()))


def test_export_loads_into_transformers_and_round_trips_exactly(tmp_path):
    transformers = require("transformers")
    _hf_model(tmp_path / "hf", "small")
    base = load_config("configs/default.py").model
    model_cfg, params = load_hf_siglip(tmp_path / "hf", base)
    save_hf_siglip(params, model_cfg, tmp_path / "out")
    again_cfg, again = load_hf_siglip(tmp_path / "out", base)
    assert again_cfg.to_dict() == model_cfg.to_dict()
    assert set(again) == set(params)
    for key, value in params.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    exported = transformers.SiglipModel.from_pretrained(tmp_path / "out").eval()
    pixels, tokens = _inputs("small")
    want = _torch_features(exported, pixels, tokens)
    model = build_with_params(model_cfg, params, "x")
    np.testing.assert_allclose(
        np.asarray(model.image(pixels.transpose(0, 2, 3, 1))), want[0], atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(model.text(tokens)), want[1], atol=1e-5)


def test_clipjax_load_reads_an_hf_siglip_directory(tmp_path):
    reference = _hf_model(tmp_path, "small")
    pixels, tokens = _inputs("small")
    want_image, want_text = _torch_features(reference, pixels, tokens)
    model = clipjax.load(tmp_path)
    assert model.source == f"HF SigLIP {tmp_path}"
    assert model.config.data.eval_resize == "squash"  # as SiglipImageProcessor: no crop
    got = model.encode_image(pixels.transpose(0, 2, 3, 1), normalize=False)
    np.testing.assert_allclose(got, want_image, atol=1e-5)
    np.testing.assert_allclose(model.encode_text(tokens, normalize=False), want_text, atol=1e-5)
    assert model.logit_bias == pytest.approx(float(reference.logit_bias.detach()), rel=1e-6)
    with pytest.raises(ValueError, match=r"tokenize: the imported text tower has 77 token ids"):
        model.tokenize(["a photo"])


def test_unsupported_siglip_configs_and_models_are_named():
    base = load_config("configs/default.py").model
    hf = {"model_type": "siglip", "vision_config": {"vision_use_head": False}}
    with pytest.raises(ValueError, match=r"vision_use_head=false"):
        model_config_from_hf_siglip(hf, base)
    hf = {"model_type": "siglip", "text_config": {"projection_size": 512}}
    with pytest.raises(ValueError, match=r"projection_size=512 differs from the vision width 768"):
        model_config_from_hf_siglip(hf, base)
    with pytest.raises(ValueError, match=r"expected 'siglip'"):
        model_config_from_hf_siglip({"model_type": "clip"}, base)
    with pytest.raises(ValueError, match=r"image.pool='gap' \(SigLIP: 'map'\)"):
        hf_siglip_config_from_model(base)
    sizes = json.dumps(
        hf_siglip_config_from_model(model_config_from_hf_siglip({"model_type": "siglip"}, base))
    )
    assert '"projection_size": 768' in sizes


SIGLIP_SHAPED = [
    "model.image.pool=map",
    "model.image.projection=none",
    "model.text.causal=False",
    "model.text.mask_padding=False",
    "model.text.pool=final",
    "model.text.projection=linear_bias",
    "model.logit_bias_init=-10.0",
    "loss.kind=sigmoid",
]


@pytest.mark.slow  # trains, converts and reloads in torch; CI runs the slow stage
def test_a_trained_siglip_shaped_run_converts_to_an_hf_siglip_model(tmp_path, digits_cache):
    from clipjax.cli import main

    transformers = require("transformers")
    work = tmp_path / "run"
    args = ["train", "--config", "configs/default.py:tiny", "--workdir", str(work)]
    overrides = [
        f"--config.{o}" for o in [*SIGLIP_SHAPED, "train.steps=3", f"data.cache_dir={digits_cache}"]
    ]
    assert main([*args, *overrides]) == 0
    assert (
        main(["convert", "--checkpoint", str(work), "--out", str(tmp_path / "x"), "--format", "hf"])
        == 0
    )
    exported = transformers.SiglipModel.from_pretrained(tmp_path / "x" / "hf").eval()
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    tokens = rng.integers(0, 300, size=(2, 32))
    want_image, want_text = _torch_features(exported, pixels, tokens)
    model = clipjax.load(work)
    np.testing.assert_allclose(
        model.encode_image(pixels.transpose(0, 2, 3, 1), normalize=False), want_image, atol=1e-5
    )
    np.testing.assert_allclose(model.encode_text(tokens, normalize=False), want_text, atol=1e-5)
    assert model.logit_bias == pytest.approx(float(exported.logit_bias.detach()), rel=1e-6)

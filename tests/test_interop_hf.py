"""HF transformers CLIP import/export: embeddings equal PyTorch's, round trips exact."""

import json

import numpy as np
import pytest
from optional import require

from clipjax.config import load_config
from clipjax.interop.hf_clip import load_hf_clip, model_config_from_hf, save_hf_clip
from clipjax.interop.params_tree import build_with_params, unrolled_params

VOCAB, CONTEXT, EOS, BOS = 99, 16, 98, 97

SMALL_CONFIGS = {
    # name: (text act, vision act, text eos id)
    "gelu": ("gelu", "gelu", EOS),
    "quick_gelu_legacy_eos": ("quick_gelu", "quick_gelu", 2),  # HF pools at argmax then
}


def _hf_model(tmp_path, name: str):
    torch, transformers = require("torch"), require("transformers")
    text_act, vision_act, eos = SMALL_CONFIGS[name]
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CONTEXT,
            hidden_act=text_act,
            bos_token_id=BOS,
            eos_token_id=eos,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=3,
            image_size=32,
            patch_size=8,
            hidden_act=vision_act,
        ),
        projection_dim=24,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # HF initialises some weights to constants; make all random
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model


def _inputs():
    rng = np.random.default_rng(1)
    pixels = rng.normal(size=(4, 3, 32, 32)).astype(np.float32)  # NCHW, as torch takes
    tokens = np.zeros((4, CONTEXT), np.int64)
    for row, length in enumerate((5, 16, 9, 2)):
        tokens[row, :length] = rng.integers(3, 90, size=length)
        tokens[row, 0], tokens[row, length - 1] = BOS, EOS
    return pixels, tokens


def _torch_features(model, pixels, tokens):
    torch = require("torch")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=torch.tensor(pixels))
        text = model.get_text_features(input_ids=torch.tensor(tokens))
    # transformers 5 returns an output object with the projected features as pooler_output
    image, text = (getattr(x, "pooler_output", x) for x in (image, text))
    return image.numpy(), text.numpy()


def _base(scan: bool):
    base = load_config("configs/default.py").model
    base.scan_layers = scan
    return base


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
@pytest.mark.parametrize("scan", [False, True])
def test_hf_import_matches_pytorch(tmp_path, name, scan):
    reference = _hf_model(tmp_path, name)
    model_cfg, params = load_hf_clip(tmp_path, _base(scan))
    assert model_cfg.image.act == SMALL_CONFIGS[name][1]
    assert model_cfg.text.pool == ("argmax" if SMALL_CONFIGS[name][2] == 2 else "eos")
    model = build_with_params(model_cfg, params, str(tmp_path))
    pixels, tokens = _inputs()
    want_image, want_text = _torch_features(reference, pixels, tokens)
    got_image = np.asarray(model.image(pixels.transpose(0, 2, 3, 1)))
    got_text = np.asarray(model.text(tokens))
    np.testing.assert_allclose(got_image, want_image, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_text, want_text, atol=1e-5, rtol=0)
    assert float(np.abs(want_text).max()) > 0.1  # not a trivially small comparison
    assert float(model.logit_scale[...]) == pytest.approx(float(reference.logit_scale.detach()))


@pytest.mark.parametrize("scan", [False, True])
def test_export_to_hf_and_back_is_exact(tmp_path, scan):
    """clipjax -> HF layout -> clipjax gives identical params, and HF's own CLIPModel
    loads the export and computes the same embeddings."""
    torch, transformers = require("torch"), require("transformers")
    _hf_model(tmp_path / "src", "gelu")
    model_cfg, params = load_hf_clip(tmp_path / "src", _base(scan))
    model = build_with_params(model_cfg, params, "src")
    original = unrolled_params(_pure(model))
    save_hf_clip(original, model_cfg, tmp_path / "out")
    model_cfg2, back = load_hf_clip(tmp_path / "out", _base(scan))
    assert model_cfg2.to_dict() == model_cfg.to_dict()
    assert sorted(back) == sorted(original)
    for name in original:
        np.testing.assert_array_equal(back[name], original[name], err_msg=name)

    exported = transformers.CLIPModel.from_pretrained(tmp_path / "out").eval()
    pixels, tokens = _inputs()
    want_image, want_text = _torch_features(exported, pixels, tokens)
    np.testing.assert_allclose(
        np.asarray(model.image(pixels.transpose(0, 2, 3, 1))), want_image, atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(np.asarray(model.text(tokens)), want_text, atol=1e-5, rtol=0)
    del torch


def _pure(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.split(model)[1])


def test_hf_config_errors_name_the_field(tmp_path):
    base = _base(False)
    with pytest.raises(ValueError, match=r"layer_norm_eps=1e-06"):
        model_config_from_hf({"vision_config": {"layer_norm_eps": 1e-6}}, base)
    with pytest.raises(ValueError, match=r"hidden_act='swish'"):
        model_config_from_hf({"text_config": {"hidden_act": "swish"}}, base)
    with pytest.raises(ValueError, match=r"model_type='siglip'"):
        model_config_from_hf({"model_type": "siglip"}, base)
    with pytest.raises(FileNotFoundError, match=r"config.json"):
        load_hf_clip(tmp_path, base)
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(FileNotFoundError, match=r"model.safetensors"):
        load_hf_clip(tmp_path, base)


def test_default_model_is_not_exportable_to_hf(tmp_path):
    """The digits default uses GAP pooling and a patch bias, which HF CLIP lacks."""
    cfg = load_config("configs/default.py:tiny").model
    fake = {"logit_scale": np.zeros((), np.float32)}  # the architecture is refused first
    with pytest.raises(ValueError, match=r"pool='gap'.*patch_bias=True"):
        save_hf_clip(fake, cfg, tmp_path)


@pytest.mark.parametrize(
    ("family", "message"),
    [
        ("configs/align/efficientnet_b3.py:tiny", r"kind='efficientnet'.*bidirectional"),
        ("configs/siglip/vit_b16.py:tiny", r"bidirectional.*pool='map'.*logit bias"),
        ("configs/coca/base.py:tiny", r"model.name='coca'"),
        ("configs/symile/xor.py:tiny", r"model.name='symile'"),
    ],
)
def test_other_families_are_refused_by_the_hf_export(tmp_path, family, message):
    fake = {"logit_scale": np.zeros((), np.float32)}
    with pytest.raises(ValueError, match=message):
        save_hf_clip(fake, load_config(family).model, tmp_path)


def test_missing_and_extra_weights_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    _hf_model(tmp_path, "gelu")
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["text_model.extra.weight"] = np.zeros(3, np.float32)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"does not use.*text_model.extra.weight"):
        load_hf_clip(tmp_path, _base(False))
    del weights["text_model.extra.weight"], weights["logit_scale"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"no 'logit_scale'"):
        load_hf_clip(tmp_path, _base(False))


def test_convert_format_hf_writes_the_trained_params(tmp_path, digits_cache):
    """A CLIP-architecture run (scanned layers) exported with `clipjax convert --format hf`
    reads back through the HF importer with exactly the checkpoint's params."""
    from clipjax.checkpoint import read_params
    from clipjax.cli import main
    from clipjax.interop.params_tree import unroll_layers

    work = tmp_path / "run"
    args = [
        "train",
        "--config",
        "configs/default.py:tiny",
        "--workdir",
        str(work),
        f"--config.data.cache_dir={digits_cache}",
        "--config.train.steps=3",
        "--config.model.image.pool=cls",
        "--config.model.image.ln_pre=True",
        "--config.model.image.patch_bias=False",
        "--config.model.scan_layers=True",
    ]
    assert main(args) == 0
    assert (
        main(["convert", "--checkpoint", str(work), "--out", str(tmp_path / "x"), "--format", "hf"])
        == 0
    )
    saved, _ = read_params(work)
    stacked = {n for n in saved if "/blocks/" in n and not n.split("/blocks/")[1][0].isdigit()}
    want = unroll_layers(saved, stacked)
    _, got = load_hf_clip(tmp_path / "x" / "hf", _base(False))
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)

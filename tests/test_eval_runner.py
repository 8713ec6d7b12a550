"""The configured evals on 8 devices equal a direct single-device computation, run
at step 0 and the end of training, and `clipjax eval` reproduces them."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from clipjax.cli import main
from clipjax.data.decode import ImageTransform
from clipjax.data.tokenizers import build_tokenizer
from clipjax.evaluate.linear_probe import linear_probe
from clipjax.evaluate.retrieval import flatten_captions, retrieval_metrics
from clipjax.evaluate.runner import Evaluator
from clipjax.evaluate.zeroshot import class_embeddings, classification_metrics
from clipjax.parallel import batch_sharding, build_mesh, rules_table
from clipjax.train.optim import build_optimizer
from clipjax.train.state import plan_train_state

ROOT = Path(__file__).resolve().parents[1]
ALL_KINDS = {
    "digits": "zeroshot",
    "digits_retrieval": "retrieval",
    "digits_probe": "linear_probe",
}


def _with_all_kinds(config):
    with config.unlocked():
        for name, kind in ALL_KINDS.items():
            config.evals[name] = dict(kind=kind, source="digits", every=0, batch_size=48)
    return config


@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_digits_evals_on_8_devices_equal_a_direct_computation(tiny_config):
    config = _with_all_kinds(tiny_config)
    mesh = build_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    rules = rules_table(config.sharding_rules)
    tx = build_optimizer(config.optim, config.train.steps)
    plan = plan_train_state(config.model, 0, tx, mesh, rules)
    params = plan.init().params
    tokenizer = build_tokenizer(config.tokenizer)
    evaluator = Evaluator(
        config,
        plan.spec,
        tokenizer,
        lambda n: batch_sharding(mesh, rules, n),
        plan.shardings.params,
    )
    got = evaluator.run(params, 0, force=True)

    model = nnx.merge(plan.spec.graphdef, jax.device_get(params))  # one device, no padding
    normalize = ImageTransform(32, config.data.mean, config.data.std, train=False).normalize

    def encode_image(crops):
        return np.asarray(model.encode_image(normalize(crops)))

    by_name = {ev.name: ev for ev in evaluator.evals}
    streamed = by_name["digits"], by_name["digits_retrieval"], by_name["digits_probe"]
    # the streamed evals against the whole sets read into memory, on one device
    zeroshot, retrieval = (ev.data.collect() for ev in streamed[:2])
    probe_train = streamed[2].train.collect()
    assert len(zeroshot.images) == 360 and len(probe_train.images) == 1437
    image = encode_image(zeroshot.images)
    classes = class_embeddings(
        lambda t: np.asarray(model.encode_text(t)),
        tokenizer,
        zeroshot.classnames,
        zeroshot.templates,
    )
    want = classification_metrics(image, classes, zeroshot.labels)
    texts, owner = flatten_captions(retrieval.captions)
    assert len(texts) == 720  # two captions per held-out digit
    want_r = retrieval_metrics(
        encode_image(retrieval.images),
        np.asarray(model.encode_text(tokenizer(texts))),
        owner,
    )
    want_p = linear_probe(
        encode_image(probe_train.images), probe_train.labels, image, zeroshot.labels
    )
    tolerance = 2 / 360  # float32 sums in another order may swap a near-tie or two
    for key, value in want.items():
        assert got[f"zeroshot/digits/{key}"] == pytest.approx(value, abs=tolerance), key
    for key, value in want_r.items():
        assert got[f"retrieval/digits_retrieval/{key}"] == pytest.approx(value, abs=tolerance)
    assert got["linear_probe/digits_probe/top1"] == pytest.approx(want_p["top1"], abs=tolerance)
    assert got["linear_probe/digits_probe/top1"] > 0.5  # random features still separate digits


def test_evals_run_at_step_0_and_the_end_and_eval_command_repeats_them(
    tmp_path, digits_cache, capsys
):
    work = tmp_path / "run"
    code = main(
        [
            "train",
            "--config",
            "configs/default.py:tiny",
            "--workdir",
            str(work),
            f"--config.data.cache_dir={digits_cache}",
            "--config.train.steps=3",
            "--config.train.log_every=3",
            "--config.evals.digits.every=2",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    evaluated = [row["step"] for row in rows if "zeroshot/digits/top1" in row]
    assert evaluated == [0, 2, 3]
    final = rows[-1]["zeroshot/digits/top1"]
    capsys.readouterr()

    out_file = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(work), "--out", str(out_file)]) == 0
    metrics = json.loads(out_file.read_text())
    assert metrics["zeroshot/digits/top1"] == pytest.approx(final, abs=1e-9)
    assert "zeroshot/digits/top1" in capsys.readouterr().out

    # --config brings only its evals (here the default's three); the model is the run's,
    # and an optional eval field is overridable from the command line
    code = main(
        [
            "eval",
            "--checkpoint",
            str(work / "checkpoints"),
            "--config",
            "configs/default.py",
            f"--config.data.cache_dir={digits_cache}",
            "--config.evals.digits_probe.batch_size=64",
            "--config.evals.digits.templates_file=" + str(_templates(tmp_path)),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "linear_probe/digits_probe/top1" in out and "retrieval/digits_retrieval" in out

    assert main(["eval", "--checkpoint", str(work), "--act", "quick_gelu"]) == 2
    assert "--act apply to --open-clip only" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "no config.json" in capsys.readouterr().err


def _templates(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("a drawing of {c}.\n")
    return path


def test_eval_command_on_hf_weights(tmp_path, digits_cache, capsys):
    """HF-layout weights written by clipjax's exporter, evaluated through `--hf`."""
    from clipjax.config import load_config
    from clipjax.interop.hf_clip import save_hf_clip
    from clipjax.interop.params_tree import unrolled_params
    from clipjax.models import build_model
    from clipjax.models.presets import CLIP_VOCAB

    model = load_config("configs/default.py:tiny").model
    model.image.update(dict(pool="cls", ln_pre=True, patch_bias=False, act="quick_gelu"))
    model.text.update(dict(vocab_size=CLIP_VOCAB, context_length=20, act="quick_gelu"))
    with nnx.use_eager_sharding(False):
        params = unrolled_params(nnx.to_pure_dict(nnx.split(build_model(model, nnx.Rngs(0)))[1]))
    save_hf_clip(params, model, tmp_path / "hf")
    code = main(
        [
            "eval",
            "--hf",
            str(tmp_path / "hf"),
            "--config",
            "configs/default.py:tiny",
            f"--config.data.cache_dir={digits_cache}",
            "--config.evals.digits.batch_size=40",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    top1 = float(out.out.split("zeroshot/digits/top1")[1].split()[0])
    assert 0.0 <= top1 <= 1.0

    assert main(["eval", "--hf", str(tmp_path / "missing")]) == 2
    assert "config.json" in capsys.readouterr().err


def _jpg_member_shards(digits_cache, out_dir) -> str:
    """The digits training shards with each image member named `.jpg`, as an
    img2dataset run writes them; returns their brace spec."""
    import io
    import tarfile

    from clipjax.data.writer import build_digits_shards

    urls = build_digits_shards(digits_cache).train_urls()[:2]
    out_dir.mkdir()
    for i, url in enumerate(urls):
        with tarfile.open(url) as source, tarfile.open(out_dir / f"{i}.tar", "w") as target:
            for member in source.getmembers():
                data = source.extractfile(member).read()
                member.name = member.name.replace(".png", ".jpg")
                target.addfile(member, io.BytesIO(data))
    return f"{out_dir}/{{0..1}}.tar"


def test_an_eval_set_keeps_its_own_image_members_whatever_the_training_key(
    tmp_path, digits_cache, caplog
):
    """The reported case: a run on `.jpg` shards (`data.image_key=jpg`) evaluated on a
    CLIP_benchmark set of `.png` members failed with a warning per sample."""
    from clipjax.data.writer import build_digits_shards

    spec = _jpg_member_shards(digits_cache, tmp_path / "jpg_shards")
    zeroshot_dir = build_digits_shards(digits_cache).zeroshot_dir
    config_file = tmp_path / "jpg_run.py"
    config_file.write_text(
        "from clipjax.config import load_config\n"
        "from clipjax.evaluate.fields import eval_entry\n"
        "import ml_collections\n\n"
        "def get_config(arg=None):\n"
        f"    c = load_config({str(ROOT / 'configs/default.py')!r} + ':tiny')\n"
        "    c.evals = ml_collections.ConfigDict()\n"
        "    c.evals.bench = eval_entry('zeroshot', 'clip_benchmark', "
        f"dataset_dir={str(zeroshot_dir)!r}, dataset_name='digits', batch_size=64)\n"
        "    return c\n"
    )
    args = [
        "train", "--config", str(config_file), "--workdir", str(tmp_path / "run"),
        f"--config.data.cache_dir={digits_cache}", "--config.data.source=shards",
        f"--config.data.train_shards={spec}", "--config.data.image_key=jpg",
        "--config.train.steps=3", "--config.train.log_every=3",
    ]  # fmt: skip
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert 0.0 <= rows[-1]["zeroshot/bench/top1"] <= 1.0
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]

    # the entry's own keys, wrong on purpose: a clear error during setup, before any
    # step (its first 32 samples are decoded as a check), one summary line for the shard
    caplog.clear()
    work2 = tmp_path / "run2"
    with caplog.at_level("WARNING"), pytest.raises(ValueError, match="no readable sample"):
        main([*args, f"--workdir={work2}", "--config.evals.bench.image_members=jpg"])
    assert not (work2 / "checkpoints").exists() or not any((work2 / "checkpoints").iterdir())
    skip_lines = [r.getMessage() for r in caplog.records if "sample(s) skipped" in r.getMessage()]
    assert (
        len(skip_lines) == 1
        and "32 sample(s) skipped: 32 x none of the members ['jpg']" in (skip_lines[0])
    )

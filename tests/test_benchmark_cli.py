"""`clipjax eval --model --dataset wds/NAME --task`: CLIP_benchmark's way, no config
file. Two datasets in one call give one table (JSON lines, CSV, Markdown) whose numbers
equal the config-driven evals of the same trained model."""

import csv
import json

import pytest

from clipjax.cli import main
from clipjax.data.writer import build_digits_shards


@pytest.fixture
def dataset_root(tmp_path, digits_cache):
    """CLIP_benchmark's folder names: wds_<name> per set."""
    shards = build_digits_shards(digits_cache)
    root = tmp_path / "sets"
    root.mkdir()
    (root / "wds_digits").symlink_to(shards.zeroshot_dir)
    (root / "wds_digits-retrieval").symlink_to(shards.retrieval_dir)
    return root


@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_two_datasets_in_one_call_write_one_table_equal_to_the_config_evals(
    trained_run, dataset_root, digits_cache, tmp_path, capsys
):
    out = tmp_path / "results"
    args = ["eval", "--model", str(trained_run), "--dataset", "wds/digits"]
    args += ["--dataset", "wds/digits/retrieval", "--dataset-root", str(dataset_root)]
    assert main([*args, "--output", str(out), "--batch-size", "64", "--workers", "1"]) == 0
    assert "results:" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["dataset"], r["task"]) for r in rows] == [
        ("wds/digits", "zeroshot_classification"),
        ("wds/digits/retrieval", "zeroshot_retrieval"),
    ]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert float(table[0]["acc1"]) == pytest.approx(rows[0]["acc1"], abs=1e-12)
    markdown = (out / "results.md").read_text().splitlines()
    assert markdown[0].startswith("| dataset | task | model | acc1 | acc5 |") and len(markdown) == 4

    reference = tmp_path / "reference.json"
    config_evals = ["eval", "--checkpoint", str(trained_run), "--config", "configs/default.py"]
    assert (
        main([*config_evals, f"--config.data.cache_dir={digits_cache}", "--out", str(reference)])
        == 0
    )
    want = json.loads(reference.read_text())
    assert rows[0]["acc1"] == pytest.approx(want["zeroshot/digits/top1"], abs=1e-9)
    assert rows[0]["acc1"] > 0.7
    assert rows[0]["mean_per_class_recall"] == pytest.approx(
        want["zeroshot/digits/mean_per_class_recall"], abs=1e-9
    )
    for k in (1, 5):
        assert rows[1][f"image_retrieval_recall@{k}"] == pytest.approx(
            want[f"retrieval/digits_retrieval/text_to_image/R@{k}"], abs=1e-9
        )
        assert rows[1][f"text_retrieval_recall@{k}"] == pytest.approx(
            want[f"retrieval/digits_retrieval/image_to_text/R@{k}"], abs=1e-9
        )

    probe = tmp_path / "probe"
    assert main([*args[:5], "--dataset-root", str(dataset_root), "--task", "linear_probe",
                 "--output", str(probe)]) == 0  # fmt: skip
    row = json.loads((probe / "results.jsonl").read_text())
    assert row["task"] == "linear_probe"
    assert row["acc1"] == pytest.approx(want["linear_probe/digits_probe/top1"], abs=1e-9)


def test_bad_benchmark_flags_are_refused(trained_run, dataset_root, tmp_path, capsys):
    model = ["eval", "--model", str(trained_run)]
    cases = [
        ([*model, "--dataset-root", str(dataset_root)], "--model needs --dataset"),
        ([*model, "--dataset", "cifar10", "--dataset-root", str(dataset_root)],
         "reads CLIP_benchmark's webdataset sets, named wds/NAME"),
        ([*model, "--dataset", "wds/cars", "--dataset-root", str(dataset_root)],
         "no CLIP_benchmark webdataset folder at"),
        ([*model, "--dataset", "wds/digits/retrieval", "--dataset-root", str(dataset_root),
          "--task", "zeroshot_classification"], "a retrieval set"),
        (["eval", "--checkpoint", str(trained_run), "--dataset", "wds/digits"],
         "apply to --model only"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv

"""`clipjax eval --model PATH --dataset wds/NAME ... --task TASK`: CLIP_benchmark's way
of evaluating, with no config file.

Any model `clipjax.load` reads is evaluated on CLIP_benchmark webdataset sets (what
`clip_benchmark_export_wds` writes and the `clip-benchmark/wds_*` sets hold). Each
set is streamed a batch at a time with worker decoding; one results table per call
is written as JSON lines, CSV and Markdown, one row per dataset and task, with
CLIP_benchmark's metric names (acc1, acc5, mean_per_class_recall,
image_retrieval_recall@k, text_retrieval_recall@k).

`--dataset-root` takes CLIP_benchmark's placeholders: `{dataset}` (the name without
`wds/`) and `{dataset_cleaned}` (that name with `/` as `-`), e.g.
`/data/wds_{dataset_cleaned}` for `--dataset wds/vtab/cifar10`.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipjax.data.decode import eval_transform, parse_keys
from clipjax.evaluate.assets import check_templates
from clipjax.evaluate.linear_probe import linear_probe
from clipjax.evaluate.retrieval import flatten_captions, retrieval_metrics
from clipjax.evaluate.sources import CLIP_BENCHMARK_IMAGE_KEYS
from clipjax.evaluate.sources.clip_benchmark import open_clip_benchmark
from clipjax.evaluate.sources.streamed import StreamedSet
from clipjax.evaluate.zeroshot import class_embeddings, classification_metrics

TASKS = ("auto", "zeroshot_classification", "zeroshot_retrieval", "linear_probe")
WDS_PREFIX = "wds/"
RESULT_FILES = ("results.jsonl", "results.csv", "results.md")
# our metric names -> CLIP_benchmark's
RENAMED = {
    "top1": "acc1",
    "top5": "acc5",
    "image_to_text/R@": "text_retrieval_recall@",
    "text_to_image/R@": "image_retrieval_recall@",
}


@dataclass(frozen=True)
class BenchmarkArgs:
    model: str
    datasets: tuple[str, ...]
    dataset_root: str
    task: str = "auto"
    output: str = "."
    batch_size: int = 256
    workers: int = 0
    image_keys: str = ";".join(CLIP_BENCHMARK_IMAGE_KEYS)
    train_limit: int = 0


def dataset_dir(dataset: str, root: str, several: bool) -> Path:
    """Where a `wds/NAME` set lies under `root` (placeholders filled, see module doc)."""
    if not dataset.startswith(WDS_PREFIX):
        raise ValueError(
            f"--dataset {dataset!r}: clipjax reads CLIP_benchmark's webdataset sets, named "
            f"{WDS_PREFIX}NAME (e.g. wds/cifar10); export others with clip_benchmark_export_wds"
        )
    name = dataset[len(WDS_PREFIX) :]
    cleaned = name.replace("/", "-")
    if "{" in root:
        return Path(root.format(dataset=name, dataset_cleaned=cleaned))
    tried = [Path(root) / f"wds_{cleaned}", Path(root) / cleaned, Path(root) / name]
    if not several:
        tried.append(Path(root))
    for path in tried:
        if (path / "test").is_dir() or (path / "train").is_dir():
            return path
    raise FileNotFoundError(
        f"--dataset {dataset!r}: no CLIP_benchmark webdataset folder at "
        f"{', '.join(str(p) for p in tried)}; give --dataset-root with {{dataset_cleaned}}"
    )


def evaluate_benchmark(args: BenchmarkArgs) -> list[dict]:
    """Every (dataset, task) row; writes the three result files into `args.output`."""
    import clipjax

    model = clipjax.load(args.model, batch_size=args.batch_size)
    keys = parse_keys(args.image_keys)
    rows = []
    for dataset in args.datasets:
        root = dataset_dir(dataset, args.dataset_root, len(args.datasets) > 1)
        started = time.perf_counter()
        test = _open(model, root, dataset, "test", keys, args.workers)
        task = _task(args.task, test)
        metrics = _metrics(model, task, test, root, dataset, keys, args)
        rows.append(
            dict(
                dataset=dataset,
                task=task,
                model=args.model,
                **{_renamed(k): v for k, v in metrics.items()},
                seconds=round(time.perf_counter() - started, 1),
            )
        )
    write_results(rows, Path(args.output))
    return rows


def _open(model, root: Path, dataset: str, split: str, keys, workers: int) -> StreamedSet:
    transform = eval_transform(model.config.data, model.image_size)
    name = dataset[len(WDS_PREFIX) :].split("/")[-1]  # bundled class names: cifar10, ...
    return open_clip_benchmark(root, name, transform, split, image_keys=keys, workers=workers)


def _task(task: str, data: StreamedSet) -> str:
    natural = "zeroshot_classification" if data.kind == "classification" else "zeroshot_retrieval"
    if task == "auto":
        return natural
    if (task == "zeroshot_retrieval") != (data.kind == "retrieval"):
        raise ValueError(f"--task {task} on {data.where}, a {data.kind} set")
    return task


def _metrics(model, task: str, test: StreamedSet, root, dataset, keys, args) -> dict:
    images, targets = _embed(model, test, args.batch_size)
    if task == "zeroshot_retrieval":
        texts, owner = flatten_captions(targets)
        return retrieval_metrics(images, model.encode_text(texts), owner)
    labels = np.asarray(targets, np.int64)
    test.check_labels(labels)
    if task == "zeroshot_classification":
        templates = check_templates(test.templates, test.where)
        classes = class_embeddings(model.encode_text, model.tokenize, test.classnames, templates)
        return classification_metrics(images, classes, labels)
    train = _open(model, root, dataset, "train", keys, args.workers).first(args.train_limit)
    features, train_targets = _embed(model, train, args.batch_size)
    return linear_probe(features, np.asarray(train_targets, np.int64), images, labels)


def _embed(model, data: StreamedSet, batch: int) -> tuple[np.ndarray, list]:
    """Image embeddings and targets of a streamed set: one batch of crops at a time."""
    embeddings, targets = [], []
    for local in data.local_batches(batch):
        embeddings.append(model.encode_image(local.crops))
        targets.extend(local.targets)
    if not targets:
        raise ValueError(f"{data.where}: no readable sample (see the skips logged above)")
    return np.concatenate(embeddings), targets


def _renamed(key: str) -> str:
    for ours, theirs in RENAMED.items():
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return key


def write_results(rows: list[dict], output: Path) -> None:
    """`results.jsonl`, `results.csv` and `results.md` in `output`: one row per dataset
    and task, the columns the union of the rows' fields."""
    output.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(output / "results.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    with open(output / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, ""), c) for c in columns) + " |" for row in rows]
    (output / "results.md").write_text("\n".join(lines) + "\n")


def _cell(value, column: str) -> str:
    if column == "seconds" or not isinstance(value, float):
        return str(value)
    return f"{value:.4f}"


def add_arguments(parser, weights) -> None:
    """`clipjax eval`'s CLIP_benchmark flags; `--model` joins the weights group."""
    weights.add_argument(
        "--model", help="anything clipjax.load reads (workdir, export, HF dir, open_clip file)"
    )
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        help="with --model: a CLIP_benchmark webdataset set, wds/NAME (repeat for more)",
    )
    parser.add_argument(
        "--dataset-root",
        dest="dataset_root",
        help="with --model: the sets' folder, or a pattern with {dataset} / {dataset_cleaned}",
    )
    parser.add_argument("--task", choices=TASKS, default="auto", help="with --model")
    parser.add_argument(
        "--output", help="with --model: folder for results.jsonl/.csv/.md (default: .)"
    )
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=256)
    parser.add_argument(
        "--train-limit",
        dest="train_limit",
        type=int,
        default=0,
        help="with --task linear_probe: fit on the first N training samples (0: all)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="with --model: decoding processes (0: inline)"
    )
    parser.add_argument(
        "--image-keys",
        dest="image_keys",
        default=";".join(CLIP_BENCHMARK_IMAGE_KEYS),
        help="with --model: image members, first found is used",
    )


def benchmark_args(args) -> BenchmarkArgs | None:
    """The CLIP_benchmark run `args` ask for (None: the config-evals mode), or a
    ValueError naming the flag that is missing or out of place."""
    if not args.model:
        if args.dataset or args.dataset_root or args.output:
            raise ValueError("--dataset, --dataset-root and --output apply to --model only")
        return None
    if not args.dataset or not args.dataset_root:
        raise ValueError("--model needs --dataset wds/NAME (one or more) and --dataset-root")
    if args.config or args.out or args.step is not None:
        raise ValueError("--config, --out and --step do not apply to --model (see --output)")
    if args.batch_size < 1 or args.workers < 0 or args.train_limit < 0:
        raise ValueError(
            f"--batch-size {args.batch_size}, --workers {args.workers} or --train-limit "
            f"{args.train_limit} out of range"
        )
    return BenchmarkArgs(
        args.model,
        tuple(args.dataset),
        args.dataset_root,
        args.task,
        args.output or ".",
        args.batch_size,
        args.workers,
        args.image_keys,
        args.train_limit,
    )


def print_rows(rows: list[dict], output: str) -> None:
    for row in rows:
        shown = {k: v for k, v in row.items() if k not in ("model",)}
        print("  ".join(f"{k}={_cell(v, k)}" for k, v in shown.items()))
    print(f"results: {', '.join(str(Path(output) / name) for name in RESULT_FILES)}")

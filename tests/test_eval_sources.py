"""Evaluation sources read back exactly what was written: bundled class names and
templates, CLIP_benchmark webdataset dirs, image folders, prepared TFDS datasets."""

import collections
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from clipjax.data.decode import ImageTransform
from clipjax.data.writer import DIGIT_WORDS, ZEROSHOT_TEMPLATES
from clipjax.evaluate.assets import (
    BUNDLED,
    bundled_classnames,
    bundled_name,
    bundled_templates,
    check_templates,
    read_lines,
)
from clipjax.evaluate.sources.clip_benchmark import clip_benchmark_shards, load_clip_benchmark
from clipjax.evaluate.sources.evalset import DEFAULT_TEMPLATE, EvalSet, resolve_templates
from clipjax.evaluate.sources.image_folder import load_image_folder
from clipjax.evaluate.sources.tfds import array_to_image, load_tfds

TRANSFORM = ImageTransform(8, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3), train=False)


def expected_pixels(image: Image.Image) -> np.ndarray:
    """The eval crop, uint8: the encoder normalises on the device."""
    return TRANSFORM.crop(image.convert("RGB"), np.random.default_rng(0))


def random_image(rng, height=None, width=None) -> Image.Image:
    height = height or int(rng.integers(8, 20))
    width = width or int(rng.integers(8, 20))
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode(image: Image.Image, fmt: str = "png") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format={"jpg": "jpeg"}.get(fmt, fmt))
    return buffer.getvalue()


def write_tar(path, samples) -> None:
    """samples: (key, {extension: bytes}) in archive order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


# -- bundled lists --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "classes", "templates"),
    [
        ("imagenet1k", 1000, 80),
        ("cifar10", 10, 18),
        ("cifar100", 100, 18),
        ("digits", 10, 4),
        ("pets", 37, 1),
        ("flowers", 102, 1),
        ("country211", 211, 5),
        ("caltech101", 102, 34),
        ("gtsrb", 43, 3),
        ("mnist", 10, 1),
        ("eurosat", 10, 3),
        ("svhn", 10, 6),
    ],
)
def test_bundled_counts(name, classes, templates):
    assert len(bundled_classnames(name)) == classes
    assert len(bundled_templates(name)) == templates
    assert all(t.count("{c}") == 1 for t in bundled_templates(name))
    assert all(n == n.strip() and n for n in bundled_classnames(name))


def test_bundled_contents():
    assert BUNDLED[:4] == ("imagenet1k", "cifar10", "cifar100", "digits") and len(BUNDLED) == 18
    imagenet = bundled_classnames("imagenet1k")
    assert imagenet[:3] == ("tench", "goldfish", "great white shark")
    assert imagenet[-1] == "toilet paper"
    duplicates = {
        n: [i for i, m in enumerate(imagenet) if m == n]
        for n, k in collections.Counter(imagenet).items()
        if k > 1
    }
    assert duplicates == {"missile": [657, 744], "sunglasses": [836, 837]}  # as OpenAI wrote
    assert bundled_templates("imagenet1k")[0] == "a bad photo of a {c}."
    assert bundled_classnames("cifar10")[0] == "airplane"
    cifar100 = bundled_classnames("cifar100")
    assert len(set(cifar100)) == 100
    assert cifar100[1] == "aquarium fish" and cifar100[-1] == "worm"
    assert [n.replace(" ", "_") for n in cifar100] == sorted(n.replace(" ", "_") for n in cifar100)
    assert bundled_templates("cifar10") == bundled_templates("cifar100")
    assert bundled_templates("cifar10")[0] == "a photo of a {c}."
    assert bundled_classnames("digits") == DIGIT_WORDS
    assert bundled_templates("digits") == ZEROSHOT_TEMPLATES


def test_bundled_names_and_errors():
    assert bundled_name("imagenet2012") == "imagenet1k"
    assert bundled_name("imagenet_v2/matched-frequency:3.0.0") == "imagenet1k"
    assert bundled_name("cifar10:3.0.2") == "cifar10"
    assert bundled_name("flowers") == "flowers" and bundled_name("vtab/pets") is None
    assert bundled_name("cars") is None  # its class names come with its dataset
    with pytest.raises(KeyError, match="cars"):
        bundled_classnames("cars")


def test_read_lines_and_check_templates(tmp_path):
    (tmp_path / "a.txt").write_text("  one \n\n two\n")
    assert read_lines(tmp_path / "a.txt") == ("one", "two")
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        read_lines(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"blank\.txt"):
        read_lines(tmp_path / "blank.txt")
    assert check_templates(["a {c}."], "x") == ("a {c}.",)
    with pytest.raises(ValueError, match=r"'a photo of \{\}\.'.*'bad'"):
        check_templates(["ok {c}", "a photo of {}.", "bad"], "where")
    with pytest.raises(ValueError, match="no templates"):
        check_templates([], "where")


def test_resolve_templates_order():
    assert resolve_templates("cifar10", ["x {c}"], ["y {c}"]) == ("x {c}",)
    assert resolve_templates("cifar10", None, ["y {c}"]) == ("y {c}",)
    assert resolve_templates("cifar10", None, None) == bundled_templates("cifar10")
    assert resolve_templates("my_set", None, None) == (DEFAULT_TEMPLATE,)
    with pytest.raises(ValueError, match="given"):
        resolve_templates("my_set", ["no placeholder"], None)


# -- CLIP_benchmark webdataset directories ------------------------------------


@pytest.fixture
def classification_dir(tmp_path):
    """Three shards named 1, 2, 10 (numeric, not lexical order), one corrupt image."""
    rng = np.random.default_rng(1)
    root = tmp_path / "cb_cls"
    written = []  # (image, label) of readable samples, in order
    for shard, count in ((1, 3), (2, 2), (10, 3)):
        samples = []
        for i in range(count):
            key, label = f"s{shard:02d}_{i}", int(rng.integers(0, 4))
            if (shard, i) == (2, 1):
                samples.append((key, {"png": b"\x89PNG not really", "cls": b"%d" % label}))
                continue
            image, fmt = random_image(rng), ("png", "webp")[i % 2]
            data = encode(image, fmt)
            samples.append((key, {fmt: data, "cls": b"%d\n" % label}))
            written.append((Image.open(io.BytesIO(data)), label))
        write_tar(root / "test" / f"{shard}.tar", samples)
    (root / "classnames.txt").write_text("apple\nbanana split\ncherry\ndate\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c}.\nthe {c}!\n")
    return root, written


def test_clip_benchmark_classification(classification_dir):
    root, written = classification_dir
    assert [p.rsplit("/", 1)[1] for p in clip_benchmark_shards(root)] == [
        "1.tar",
        "2.tar",
        "10.tar",
    ]
    got = load_clip_benchmark(root, "fruit", TRANSFORM)
    assert got.kind == "classification"
    assert len(got) == 7 and got.skipped == 1
    assert got.images.dtype == np.uint8 and got.images.shape == (7, 8, 8, 3)
    assert got.labels.dtype == np.int64
    assert got.labels.tolist() == [label for _, label in written]
    np.testing.assert_array_equal(got.images, np.stack([expected_pixels(im) for im, _ in written]))
    assert got.classnames == ("apple", "banana split", "cherry", "date")
    assert got.templates == ("a {c}.", "the {c}!")
    assert got.captions is None

    overridden = load_clip_benchmark(
        root, "fruit", TRANSFORM, templates=["x {c}"], classnames=["a", "b", "c", "d"]
    )
    assert overridden.templates == ("x {c}",) and overridden.classnames == ("a", "b", "c", "d")
    np.testing.assert_array_equal(overridden.images, got.images)


def test_clip_benchmark_missing_classnames_uses_bundled_or_fails(classification_dir):
    root, _ = classification_dir
    (root / "classnames.txt").unlink()
    (root / "zeroshot_classification_templates.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classnames"):
        load_clip_benchmark(root, "fruit", TRANSFORM)
    got = load_clip_benchmark(root, "cifar10", TRANSFORM)  # .cls members: classification
    assert got.classnames == bundled_classnames("cifar10")
    assert got.templates == bundled_templates("cifar10")


def test_clip_benchmark_labels_beyond_classnames_fail(classification_dir):
    root, _ = classification_dir
    (root / "classnames.txt").write_text("apple\nbanana\n")
    with pytest.raises(ValueError, match="2 class names"):
        load_clip_benchmark(root, "fruit", TRANSFORM)


def test_clip_benchmark_retrieval(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "cb_ret"
    captions = [
        ("a dog on grass", "a brown dog", "dog running"),
        ("two cats", "cats, sleeping"),
        ("a red car", "a car parked", "the car\\nwith an escaped newline"),
    ]
    images, samples = [], []
    for i, caps in enumerate(captions):
        image = random_image(rng)
        images.append(image)
        text = "\n".join(caps) + ("\n\n" if i == 1 else "")  # blank lines are not captions
        samples.append((f"{i:04d}", {"jpg": encode(image, "jpg"), "txt": text.encode()}))
    write_tar(root / "test" / "0.tar", samples)
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "dataset_type.txt").write_text("retrieval\n")
    got = load_clip_benchmark(root, "tiny_captions", TRANSFORM)
    assert got.kind == "retrieval" and got.skipped == 0
    assert got.labels is None and got.classnames is None and got.templates is None
    assert got.captions == tuple(captions)
    decoded = [Image.open(io.BytesIO(encode(im, "jpg"))) for im in images]
    np.testing.assert_array_equal(got.images, np.stack([expected_pixels(im) for im in decoded]))

    (root / "dataset_type.txt").unlink()  # no classnames.txt, .txt members: still retrieval
    assert load_clip_benchmark(root, "tiny_captions", TRANSFORM).captions == tuple(captions)
    with pytest.raises(ValueError, match="retrieval"):
        load_clip_benchmark(root, "tiny_captions", TRANSFORM, templates=["a {c}"])


def test_clip_benchmark_bad_paths_and_empty_sets(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*classnames\.txt"):
        load_clip_benchmark(tmp_path / "nowhere", "x", TRANSFORM)
    (tmp_path / "cb").mkdir()
    with pytest.raises(FileNotFoundError, match=r"cb/test.*layout"):
        load_clip_benchmark(tmp_path / "cb", "x", TRANSFORM)
    (tmp_path / "cb" / "test" / "nshards.txt").parent.mkdir()
    (tmp_path / "cb" / "test" / "nshards.txt").write_text("2\n")
    write_tar(tmp_path / "cb" / "test" / "0.tar", [("a", {"png": b"junk", "cls": b"0"})])
    with pytest.raises(FileNotFoundError, match=r"1\.tar"):
        load_clip_benchmark(tmp_path / "cb", "x", TRANSFORM)
    (tmp_path / "cb" / "test" / "nshards.txt").write_text("1\n")
    (tmp_path / "cb" / "classnames.txt").write_text("a\n")
    with pytest.raises(ValueError, match=r"no readable sample \(1 unreadable"):
        load_clip_benchmark(tmp_path / "cb", "x", TRANSFORM)


def test_clip_benchmark_broken_shard_is_an_error(classification_dir):
    root, _ = classification_dir
    (root / "test" / "2.tar").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(RuntimeError, match="1 shard"):
        load_clip_benchmark(root, "fruit", TRANSFORM)


def test_clip_benchmark_skips_are_summarised_per_shard(classification_dir, caplog):
    """A wrong image key skips every sample: one summary line per shard with counts and
    the members that were there, not one warning per sample."""
    root, _ = classification_dir
    with caplog.at_level("WARNING"), pytest.raises(ValueError) as failure:
        load_clip_benchmark(root, "fruit", TRANSFORM, image_keys=("jpg",))
    message = str(failure.value)
    assert "no readable sample (8 unreadable skipped)" in message
    assert "1.tar: 3 sample(s) skipped: 3 x none of the members ['jpg']" in message
    assert "Members of the first samples: cls (8), png (6), webp (2)" in message
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 3  # the three shards
    assert [line.rsplit("/", 1)[1] for line in lines] == [
        "1.tar: 3 sample(s) skipped: 3 x none of the members ['jpg']",
        "2.tar: 2 sample(s) skipped: 2 x none of the members ['jpg']",
        "10.tar: 3 sample(s) skipped: 3 x none of the members ['jpg']",
    ]

    caplog.clear()
    with caplog.at_level("WARNING"):
        got = load_clip_benchmark(root, "fruit", TRANSFORM)  # the corrupt image: one skip
    assert got.skipped == 1
    shard_lines = [r.getMessage() for r in caplog.records if "2.tar:" in r.getMessage()]
    assert len(shard_lines) == 1 and "1 sample(s) skipped: 1 x undecodable image" in shard_lines[0]


# -- image folders --------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "folder"
    written = []
    for label, cls in enumerate(["cat", "golden_retriever", "zebra"]):
        (root / cls).mkdir(parents=True)
        for i, fmt in enumerate(("png", "jpg", "webp")):
            image = random_image(rng)
            data = encode(image, fmt)
            (root / cls / f"img{i}.{fmt.upper() if i == 1 else fmt}").write_bytes(data)
            written.append((Image.open(io.BytesIO(data)), label))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root, written


def test_image_folder(image_folder):
    root, written = image_folder
    got = load_image_folder(root, "animals", TRANSFORM)
    assert got.classnames == ("cat", "golden retriever", "zebra")
    assert got.templates == (DEFAULT_TEMPLATE,)
    assert got.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and got.skipped == 0
    np.testing.assert_array_equal(got.images, np.stack([expected_pixels(im) for im, _ in written]))

    (root / "classnames.txt").write_text("kitty\ndog\nstripes\n")
    (root / "zebra" / "broken.png").write_bytes(b"broken")
    got = load_image_folder(root, "animals", TRANSFORM, templates=["art of a {c}"])
    assert got.classnames == ("kitty", "dog", "stripes") and got.templates == ("art of a {c}",)
    assert len(got) == 9 and got.skipped == 1


def test_image_folder_errors(image_folder, tmp_path):
    root, _ = image_folder
    with pytest.raises(FileNotFoundError, match=r"missing_dir.*subfolder per class"):
        load_image_folder(tmp_path / "missing_dir", "x", TRANSFORM)
    (tmp_path / "flat").mkdir()
    random_image(np.random.default_rng(0)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(FileNotFoundError, match="no class subfolders"):
        load_image_folder(tmp_path / "flat", "x", TRANSFORM)
    (root / "classnames.txt").write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="2 class names for 3 class folders"):
        load_image_folder(root, "x", TRANSFORM)


# -- TFDS -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds_dataset(tmp_path_factory):
    """A tiny dataset prepared by TFDS itself in array_record format, with no
    TensorFlow: images are given as PIL images (TFDS PNG-encodes them with PIL;
    numpy images would need tf.image.encode_png)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    rng = np.random.default_rng(4)
    arrays = [rng.integers(0, 256, (int(h), 11, 3), dtype=np.uint8) for h in (9, 10, 12, 14, 9)]
    labels = [2, 0, 1, 2, 1]

    with tfds.core.registered.skip_registration():

        class TinyPets(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                features = tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3)),
                        "label": tfds.features.ClassLabel(names=["cat", "golden_retriever", "eel"]),
                        "caption": tfds.features.Sequence(tfds.features.Text()),
                    }
                )
                return tfds.core.DatasetInfo(
                    builder=self, features=features, disable_shuffling=True
                )

            def _split_generators(self, dl_manager):
                return {"test": self._generate_examples()}

            def _generate_examples(self):
                for i, (array, label) in enumerate(zip(arrays, labels, strict=True)):
                    captions = [f"picture {i}", f"label {label}"]
                    yield i, {"image": Image.fromarray(array), "label": label, "caption": captions}

    root = tmp_path_factory.mktemp("tfds")
    builder = TinyPets(data_dir=str(root), file_format="array_record")
    builder.download_and_prepare()
    return root, builder.data_dir, arrays, labels


def test_tfds_classification(tfds_dataset):
    root, version_dir, arrays, labels = tfds_dataset
    got = load_tfds("tiny_pets", root, TRANSFORM)
    assert got.kind == "classification" and got.skipped == 0
    assert got.labels.tolist() == labels
    assert got.classnames == ("cat", "golden retriever", "eel")
    assert got.templates == (DEFAULT_TEMPLATE,)
    expected = np.stack([expected_pixels(Image.fromarray(a)) for a in arrays])
    np.testing.assert_array_equal(got.images, expected)

    direct = load_tfds(
        "tiny_pets",
        version_dir,
        TRANSFORM,
        limit=3,
        templates=["a {c}"],
        classnames=["a", "b", "c"],
    )
    assert direct.labels.tolist() == labels[:3]
    assert direct.classnames == ("a", "b", "c") and direct.templates == ("a {c}",)
    np.testing.assert_array_equal(direct.images, expected[:3])


def test_tfds_retrieval_and_errors(tfds_dataset, tmp_path):
    root, _, _, labels = tfds_dataset
    got = load_tfds("tiny_pets", root, TRANSFORM, caption_key="caption")
    assert got.kind == "retrieval"
    assert got.captions == tuple((f"picture {i}", f"label {y}") for i, y in enumerate(labels))
    with pytest.raises(FileNotFoundError, match=r"splits.*'train'"):
        load_tfds("tiny_pets", root, TRANSFORM, split="train")
    with pytest.raises(FileNotFoundError, match="no prepared dataset 'other'"):
        load_tfds("other", root, TRANSFORM)
    with pytest.raises(FileNotFoundError, match="not_here"):
        load_tfds("tiny_pets", tmp_path / "not_here", TRANSFORM)


def test_array_to_image_grayscale_and_limit():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5, 1)
    image = array_to_image(gray, max_pixels=100)
    assert image.mode == "RGB" and image.size == (5, 4)
    assert np.asarray(image)[..., 1].tolist() == gray[..., 0].tolist()
    with pytest.raises(ValueError, match="max_pixels=10"):
        array_to_image(gray, max_pixels=10)


def test_eval_set_checks_its_fields():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="neither"):
        EvalSet("x", images, None, None, None, None, 0)
    with pytest.raises(ValueError, match="3 class names"):
        EvalSet("x", images, np.array([0, 3]), ("a", "b", "c"), ("{c}",), None, 0)
    with pytest.raises(ValueError, match="1 caption lists"):
        EvalSet("x", images, None, None, None, (("a",),), 0)


def test_clip_benchmark_workers_give_the_same_set(classification_dir):
    root, _ = classification_dir
    inline = load_clip_benchmark(root, "fruit", TRANSFORM)
    pooled = load_clip_benchmark(root, "fruit", TRANSFORM, workers=2)
    np.testing.assert_array_equal(pooled.images, inline.images)
    assert pooled.labels.tolist() == inline.labels.tolist() and pooled.skipped == 1


def test_image_folder_of_wordnet_ids_takes_bundled_names(tmp_path):
    rng = np.random.default_rng(5)
    for synset in ("n01440764", "n01443537"):
        (tmp_path / synset).mkdir()
        random_image(rng).save(tmp_path / synset / "a.png")
    with pytest.raises(ValueError, match="WordNet ids"):
        load_image_folder(tmp_path, "imagenet1k", TRANSFORM)  # 2 folders, 1000 names
    (tmp_path / "classnames.txt").write_text("tench\ngoldfish\n")
    assert load_image_folder(tmp_path, "x", TRANSFORM).classnames == ("tench", "goldfish")


def test_image_folder_splits_for_evals(image_folder, tmp_path):
    """The runner reads DIR/<split>; a probe refuses a folder without splits, and a
    split that is not there is named."""
    from ml_collections import ConfigDict

    from clipjax.config import load_config
    from clipjax.evaluate.runner import build_eval

    root, _ = image_folder
    data = load_config("configs/default.py").data
    data.image_size = 8
    probe = ConfigDict(dict(kind="linear_probe", source="image_folder", dataset_dir=str(root)))
    with pytest.raises(FileNotFoundError, match=r"linear probe needs .*train"):
        build_eval("pets", probe, data)
    split_root = tmp_path / "split"
    (split_root / "train").mkdir(parents=True)
    (root).rename(split_root / "test")
    with pytest.raises(FileNotFoundError, match=r"has splits \['train', 'test'\], not 'val'"):
        build_eval(
            "pets", ConfigDict({**probe, "dataset_dir": str(split_root), "split": "val"}), data
        )


def test_a_streamed_set_splits_its_samples_between_processes(classification_dir):
    """Each of 2 processes decodes every other sample, a batch at a time; together they
    give the in-memory set exactly once, in order, the corrupt sample skipped."""
    from clipjax.evaluate.sources.clip_benchmark import open_clip_benchmark

    root, _ = classification_dir
    streamed = open_clip_benchmark(root, "fruit", TRANSFORM)
    whole = streamed.collect()
    parts = {}
    for process in (0, 1):
        batches = list(streamed.local_batches(2, process, 2))
        assert all(len(b.crops) <= 2 for b in batches)
        for batch in batches:
            for crop, label, position in zip(
                batch.crops, batch.targets, batch.positions, strict=True
            ):
                assert position % 2 == process
                parts[int(position)] = (crop, label)
    assert sorted(parts) == [0, 1, 2, 3, 5, 6, 7]  # 8 samples, position 4 is corrupt
    np.testing.assert_array_equal(np.stack([parts[p][0] for p in sorted(parts)]), whole.images)
    assert [parts[p][1] for p in sorted(parts)] == whole.labels.tolist()
    # a linear probe's train_limit: the first N samples, the unreadable one counted
    first = streamed.first(5).collect()
    np.testing.assert_array_equal(first.images, whole.images[:4])
    assert first.skipped == 1 and streamed.first(0) is streamed


def test_embed_stream_on_8_devices_equals_embedding_the_whole_array(classification_dir):
    import jax

    from clipjax.evaluate.features import embed_all, embed_stream
    from clipjax.evaluate.sources.clip_benchmark import open_clip_benchmark
    from clipjax.parallel import batch_sharding, build_mesh

    mesh = build_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    rules = {"batch": ("data",)}
    assert jax.device_count() == 8

    def sharding_for(ndim):
        return batch_sharding(mesh, rules, ndim)

    def encode(x):  # a per-row function whose rows can be told apart
        return x.astype("float32").reshape(x.shape[0], -1)[:, :5] * 2.0

    root, _ = classification_dir
    streamed = open_clip_benchmark(root, "fruit", TRANSFORM)
    got, labels = embed_stream(
        jax.jit(encode), streamed.local_batches(8), 8, streamed.crop_shape, sharding_for
    )
    whole = streamed.collect()
    want = embed_all(jax.jit(encode), whole.images, 8, sharding_for)
    np.testing.assert_array_equal(got, want)
    assert labels == whole.labels.tolist()

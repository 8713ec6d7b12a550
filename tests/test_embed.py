"""`clipjax embed`: a dataset's embeddings equal `clipjax.load(...).encode_image` on
the same images, whatever the workers and processes; reruns skip finished shards;
bad images are counted and a broken shard is named."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

import clipjax
from clipjax.cli import main
from clipjax.inference.embed import embed_images


def _shards(digits_cache, count=3):
    folder = next(digits_cache.glob("digits-*")) / "train"
    return sorted(folder.glob("*.tar"))[:count]


def _images_in(tar_path):
    """key -> PIL image, read with the standard library's tarfile."""
    images = {}
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            if ext == "png":
                images[key] = Image.open(io.BytesIO(tar.extractfile(member).read()))
    return images


def _read(folder, name):
    rows = np.load(folder / f"{name}.npy")
    index = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
    return rows, index


def test_shard_embeddings_equal_encode_image(trained_run, digits_cache, tmp_path):
    shards = _shards(digits_cache)
    spec = str(shards[0].parent / "{00000..00002}.tar")
    args = ["embed", "--model", str(trained_run), "--images", spec, "--out", str(tmp_path / "e")]
    assert main([*args, "--dtype", "float32", "--workers", "2"]) == 0
    model = clipjax.load(trained_run)
    for number, shard in enumerate(shards):
        rows, index = _read(tmp_path / "e" / "img_emb", f"{number:05d}")
        images = _images_in(shard)
        assert [entry["key"] for entry in index] == list(images)  # every image, in tar order
        assert {entry["source"] for entry in index} == {str(shard)}
        assert rows.dtype == np.float32 and rows.shape == (len(images), model.embed_dim)
        want = model.encode_image([images[entry["key"]] for entry in index])
        np.testing.assert_allclose(rows, want, atol=1e-6)
    manifest = json.loads((tmp_path / "e" / "img_emb" / "manifest.json").read_text())
    assert manifest["units"] == [str(s) for s in shards] and manifest["dtype"] == "float32"
    folder = tmp_path / "shards"  # a folder of shards is read as its sorted .tar files
    folder.mkdir()
    for shard in shards:
        (folder / shard.name).write_bytes(shard.read_bytes())
    assert main([*args[:4], str(folder), "--out", str(tmp_path / "f"), "--dtype", "float32"]) == 0
    for number in range(3):
        np.testing.assert_array_equal(
            _read(tmp_path / "f" / "img_emb", f"{number:05d}")[0],
            _read(tmp_path / "e" / "img_emb", f"{number:05d}")[0],
        )

    inline = tmp_path / "inline"
    assert main([*args[:-1], str(inline), "--dtype", "float32", "--workers", "0"]) == 0
    for number in range(3):
        a, b = (
            _read(tmp_path / "e" / "img_emb", f"{number:05d}"),
            _read(inline / "img_emb", f"{number:05d}"),
        )
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]


def _folder(tmp_path):
    """An odd layout: nested folders, sizes and modes, a corrupt image, a non-image."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for n in range(17):
        folder = root / ("a" if n % 3 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(20, 90)), int(rng.integers(20, 90)))
        mode = "L" if n % 5 == 0 else "RGB"
        pixels = rng.integers(0, 256, (*size[::-1], 3), np.uint8)
        Image.fromarray(pixels).convert(mode).save(
            folder / f"img{n:02d}.{'jpg' if n % 2 else 'png'}"
        )
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def test_a_folder_is_embedded_in_shards_and_a_rerun_skips_finished_ones(
    trained_run, tmp_path, capsys
):
    root = _folder(tmp_path)
    out = tmp_path / "out"
    args = ["embed", "--model", str(trained_run), "--images", str(root), "--out", str(out)]
    assert main([*args, "--per-shard", "5"]) == 0
    assert "embedded 17 images into 4 shard(s)" in capsys.readouterr().out
    folder = out / "img_emb"
    model = clipjax.load(trained_run)
    keys, rows = [], []
    for name in ("00000", "00001", "00002", "00003"):
        part, index = _read(folder, name)
        assert part.dtype == np.float16
        keys += [entry["key"] for entry in index]
        rows.append(part)
    assert len(keys) == 17 and "a/broken.jpg" not in keys and keys == sorted(keys)
    want = model.encode_image([Image.open(root / key) for key in keys])
    np.testing.assert_allclose(np.concatenate(rows), want, atol=2e-3)  # float16 rows
    stats = [json.loads((folder / f"0000{n}.stats.json").read_text()) for n in range(4)]
    assert sum(s["skipped"] for s in stats) == 1
    assert any("broken.jpg" in r for s in stats for r in s["skip_reasons"])

    os.remove(folder / "00002.npy")
    kept = (folder / "00001.npy").stat().st_mtime_ns
    assert main([*args, "--per-shard", "5"]) == 0
    assert "into 1 shard(s)" in capsys.readouterr().out
    assert (folder / "00002.npy").exists() and (folder / "00001.npy").stat().st_mtime_ns == kept

    assert main([*args, "--per-shard", "6"]) == 2  # other units: refused, not mixed
    assert "holds embeddings of another run (units differ)" in capsys.readouterr().err


def test_processes_split_the_shards_and_together_write_them_all(
    trained_run, digits_cache, tmp_path
):
    shards = _shards(digits_cache)
    spec = "::".join(str(s) for s in shards)
    model = clipjax.load(trained_run)
    whole = embed_images(model, spec, tmp_path / "one", dtype="float32")
    parts = [
        embed_images(
            model, spec, tmp_path / "two", dtype="float32", process_index=i, process_count=2
        )
        for i in range(2)
    ]
    assert [len(p.written) for p in parts] == [2, 1] and len(whole.written) == 3
    for number in range(3):
        a, b = (
            _read(tmp_path / "one" / "img_emb", f"{number:05d}"),
            _read(tmp_path / "two" / "img_emb", f"{number:05d}"),
        )
        np.testing.assert_array_equal(a[0], b[0])


def test_a_broken_shard_is_named_and_the_others_are_written(
    trained_run, digits_cache, tmp_path, capsys
):
    good, other = _shards(digits_cache, 2)
    broken = tmp_path / "broken.tar"
    broken.write_bytes(other.read_bytes()[:20_000])  # cut mid-member
    spec = f"{good}::{broken}"
    args = ["embed", "--model", str(trained_run), "--images", spec, "--out", str(tmp_path / "o")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"not written: {broken}" in err
    assert (tmp_path / "o" / "img_emb" / "00000.npy").exists()
    assert not (tmp_path / "o" / "img_emb" / "00001.npy").exists()
    assert main([*args[:4], str(tmp_path / "none-{0..1}.tar"), "--out", str(tmp_path / "p")]) == 2
    assert "no such folder or shard" in capsys.readouterr().err


def test_texts_are_embedded_by_line(trained_run, tmp_path):
    texts = ["a 3", "", "the digit seven", "  ", "nine"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "o"
    args = ["--model", str(trained_run), "--texts", str(tmp_path / "t.txt"), "--out", str(out)]
    assert main(["embed", *args, "--dtype", "float32", "--per-shard", "2"]) == 0
    rows, index = [], []
    for name in ("00000", "00001", "00002"):
        part, entries = _read(out / "text_emb", name)
        rows.append(part)
        index += entries
    assert [e["line"] for e in index] == [1, 3, 5]
    want = clipjax.load(trained_run).encode_text(["a 3", "the digit seven", "nine"])
    np.testing.assert_allclose(np.concatenate(rows), want, atol=1e-6)


@pytest.mark.parametrize(
    "extra,message",
    [
        ([], "give --images, --texts or both"),
        (["--texts", "/nonexistent.txt"], "nonexistent.txt"),
        (["--images", "x", "--per-shard", "0"], "--per-shard=0; expected at least 1"),
    ],
)
def test_bad_arguments_are_named(trained_run, tmp_path, capsys, extra, message):
    assert main(["embed", "--model", str(trained_run), "--out", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # starts two JAX processes (about a minute); CI runs the slow stage
def test_two_launched_processes_write_what_one_writes(trained_run, digits_cache, tmp_path):
    """`launch/local.py` starts 2 processes of 4 devices: each embeds its own shards."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    shards = _shards(digits_cache)
    spec = "::".join(str(s) for s in shards)
    args = ["embed", "--model", str(trained_run), "--images", spec, "--dtype", "float32"]
    command = [sys.executable, str(root / "launch" / "local.py"), "--processes=2"]
    command += ["--devices-per-process=4", "--", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert "into 2 shard(s)" in printed and "into 1 shard(s)" in printed  # 0, 2 | 1
    embed_images(clipjax.load(trained_run), spec, tmp_path / "one", dtype="float32")
    for number in range(3):
        two = _read(tmp_path / "two" / "img_emb", f"{number:05d}")
        one = _read(tmp_path / "one" / "img_emb", f"{number:05d}")
        np.testing.assert_allclose(two[0], one[0], atol=1e-6)
        assert two[1] == one[1]

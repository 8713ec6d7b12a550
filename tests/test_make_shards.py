"""`clipjax shards` from a folder, a CSV/TSV and the digits, read back by the loader."""

import io
import json

from PIL import Image

from clipjax.cli import main
from clipjax.data.shards import SampleStream


def _save(path, value, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), (value, 0, 0)).save(path, format=fmt)


def _samples(out):
    urls = sorted(str(p) for p in out.glob("*.tar"))
    return list(SampleStream(urls, seed=0, mode="once", shuffle_shards=False))


def test_folder_to_shards_with_class_captions(tmp_path, capsys):
    root = tmp_path / "images"
    for i in range(3):
        _save(root / "golden_retriever" / f"{i}.jpg", i, "JPEG")
        _save(root / "tabby" / f"{i}.png", 10 + i)
    (root / "tabby" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "tabby" / "notes.txt").write_text("not an image")
    out = tmp_path / "shards"
    assert (
        main(["shards", "--from-folder", str(root), "--out", str(out), "--samples-per-shard", "4"])
        == 0
    )
    assert "wrote 6 samples in 2 shard(s)" in capsys.readouterr().out
    samples = _samples(out)
    assert len(samples) == 6
    dog = next(s for s in samples if "jpg" in s)
    assert "golden retriever" in dog["txt"].decode() and dog["cls"] == b"0"
    assert json.loads(dog["json"])["class"] == "golden_retriever"
    cat = next(s for s in samples if "png" in s)
    assert Image.open(io.BytesIO(cat["png"])).size == (6, 5) and cat["cls"] == b"1"
    assert main(["shards", "--from-folder", str(root), "--out", str(out)]) == 2
    assert "already holds .tar shards" in capsys.readouterr().err


def test_csv_and_tsv_to_shards_skip_missing_images_and_empty_captions(tmp_path, capsys):
    _save(tmp_path / "a.png", 1)
    _save(tmp_path / "b.png", 2)
    rows = [
        ("a.png", "a red square"),
        ("missing.png", "gone"),
        ("b.png", " "),
        (str(tmp_path / "b.png"), "dark red"),
    ]
    for suffix, sep in ((".csv", ","), (".tsv", "\t")):
        table = tmp_path / f"pairs{suffix}"
        table.write_text("path" + sep + "caption\n" + "".join(f"{p}{sep}{c}\n" for p, c in rows))
        out = tmp_path / f"out{suffix}"
        assert main(["shards", "--from-csv", str(table), "--out", str(out)]) == 0
        assert "wrote 2 samples in 1 shard(s)" in capsys.readouterr().out
        assert [s["txt"] for s in _samples(out)] == [b"a red square", b"dark red"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,text\nx,y\n")
    assert main(["shards", "--from-csv", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "lacks column(s) ['caption', 'path']" in capsys.readouterr().err


def test_digits_to_shards(tmp_path, capsys):
    assert (
        main(["shards", "--from-digits", "--out", str(tmp_path), "--samples-per-shard", "3000"])
        == 0
    )
    train = next(tmp_path.glob("digits-*/train"))
    assert len(list(train.glob("*.tar"))) == 3  # 1437 * 6 captions / 3000

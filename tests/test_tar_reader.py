"""The tar reader returns what Python's tarfile does, in every header format, and
refuses damaged archives."""

import io
import tarfile

import pytest

from clipjax.data.tar_reader import TarError, _pax_records, tar_members, tar_samples

LONG = "a/" + "very-long-directory-name/" * 8 + "0001.jpg"  # over 100 bytes


def _archive(fmt: int, members: list[tuple[str, bytes]], mtime: float = 1.5) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        directory = tarfile.TarInfo("adir")
        directory.type = tarfile.DIRTYPE  # skipped by both readers
        tar.addfile(directory)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _reference(archive: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r|") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]


MEMBERS = [
    ("0000.jpg", b"\xff\xd8" + bytes(range(256)) * 3),
    ("0000.txt", "ünïcödé caption 🐱".encode()),
    ("0001.JSON", b'{"caption": "x"}'),
    ("empty.txt", b""),
    (LONG, b"long name"),
    ("dir/ünï-näme.png", b"png" * 1000),
]


@pytest.mark.parametrize(
    "fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu-longname"]
)
def test_members_equal_tarfile(fmt):
    archive = _archive(fmt, MEMBERS)
    assert list(tar_members(io.BytesIO(archive))) == _reference(archive) == MEMBERS


def test_ustar_prefix_names():
    name = "prefix-dir/" * 8 + "x.txt"  # fits ustar's 155-byte prefix + 100-byte name
    archive = _archive(tarfile.USTAR_FORMAT, [(name, b"ok")], mtime=1)
    assert list(tar_members(io.BytesIO(archive))) == [(name, b"ok")]


def test_samples_group_by_key_like_webdataset():
    archive = _archive(tarfile.PAX_FORMAT, [*MEMBERS, ("__meta__.json", b"{}")])
    samples = list(tar_samples(io.BytesIO(archive), "u.tar"))
    assert [s["__key__"] for s in samples] == ["0000", "0001", "empty", LONG[:-4], "dir/ünï-näme"]
    assert samples[0]["jpg"] == MEMBERS[0][1] and samples[0]["txt"] == MEMBERS[1][1]
    assert samples[1]["json"] == b'{"caption": "x"}' and samples[1]["__url__"] == "u.tar"


def test_damage_is_an_error_after_the_complete_members():
    archive = _archive(tarfile.PAX_FORMAT, MEMBERS)
    with pytest.raises(TarError, match="empty shard"):
        list(tar_members(io.BytesIO(b"")))
    for cut in (700, 2300, 6000, 12288 + 1500, 12288 + 3000 + 100):  # headers, data, padding
        got = []
        with pytest.raises(TarError, match="truncated"):
            got.extend(tar_members(io.BytesIO(archive[:cut])))
        assert got == MEMBERS[: len(got)]
    corrupt = bytearray(archive)
    corrupt[512 + 10] ^= 0xFF  # the name field of the second header
    with pytest.raises(TarError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(corrupt))))
    with pytest.raises(TarError, match="checksum"):
        list(tar_members(io.BytesIO(b"not a tar file at all".ljust(512, b"!"))))
    duplicate = _archive(tarfile.PAX_FORMAT, [("k.txt", b"1"), ("k.txt", b"2")])
    with pytest.raises(TarError, match="appears twice"):
        list(tar_samples(io.BytesIO(duplicate), "d.tar"))


def test_bad_pax_lengths_and_missing_end_blocks():
    for record in (b"0 path=x\n", b"-5 path=x\n", b"3 path=x\n", b"99 path=x\n", b"x path=y\n"):
        with pytest.raises(TarError, match="pax record"):
            _pax_records(record)
    assert _pax_records(b"12 path=abc\n") == {"path": "abc"}
    archive = _archive(tarfile.PAX_FORMAT, MEMBERS)
    # cut right after the last member's padded data: no end-of-archive blocks, as tarfile allows
    assert list(tar_members(io.BytesIO(archive[: 12288 + 3072]))) == MEMBERS


def test_only_zero_padding_may_follow_the_end_of_archive():
    archive = _archive(tarfile.PAX_FORMAT, MEMBERS)
    assert list(tar_members(io.BytesIO(archive + bytes(4096)))) == MEMBERS
    got = []
    with pytest.raises(TarError, match="after the end-of-archive"):  # e.g. two tars concatenated
        got.extend(tar_members(io.BytesIO(archive + archive)))
    assert got == MEMBERS


def test_a_corrupt_gzip_stream_that_decodes_to_an_early_end_block_is_a_failed_shard(tmp_path):
    """Zeroed deflate bytes can decode to a zero block mid-archive; the reader must
    read on to gzip's CRC instead of taking it for the end (a counted skip, not data loss
    passed off as a complete shard)."""
    import gzip

    from clipjax.data.shards import DataStats, SampleStream

    members = [(f"{i:04d}.txt", b"x" * 600) for i in range(6)]
    full, first = (_archive(tarfile.PAX_FORMAT, m) for m in (members, members[:4]))
    complete = first.index(bytes(1024), 512)  # 4 members, before their end-of-archive blocks
    early_end = first[:complete] + bytes(len(full) - complete)  # then only zeros
    packed = bytearray(gzip.compress(early_end, mtime=0))
    packed[-8:-4] = (int.from_bytes(packed[-8:-4], "little") ^ 1).to_bytes(4, "little")  # CRC
    path = tmp_path / "early-end.tar.gz"
    path.write_bytes(bytes(packed))
    stats = DataStats()
    samples = list(SampleStream([str(path)], seed=0, mode="once", stats=stats))
    assert [s["__key__"] for s in samples] == ["0000", "0001", "0002", "0003"]
    assert stats.failed_shards == 1

"""Tar streams -> webdataset samples, without Python's `tarfile`.

Parsing headers with `tarfile` cost the loader's main process about 0.6 ms per
sample on img2dataset-style shards (a pax record per member), which on two cores
held the loader under 0.8 of the decode-only ceiling (BENCHMARKS.md). This reads
the 512-byte headers directly: ustar names with prefixes, pax `path`/`size`
records, GNU long names, octal and base-256 sizes, checked header checksums.
Members are grouped into samples as webdataset does: the key is the path up to
the first dot of the file name, the rest (lowercased) is the member's field;
names like `__meta__` are skipped and a repeated field within a sample is an error.
Everything else (directories, links) is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
REGULAR = (b"0", b"\0", b"7")
KEY_AND_FIELD = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
SKIPPED = re.compile(r"__[^/]*__($|/)")


class TarError(ValueError):
    """The stream is not a readable tar archive (truncated, corrupt header, bad pax)."""


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    while size > (got := sum(map(len, parts))):
        more = stream.read(size - got)
        if not more:
            break
        parts.append(more)
    return b"".join(parts)


def _number(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:  # base-256, for sizes beyond 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise TarError(f"tar header {what} field {field!r} is not a number") from None


def _pax_records(data: bytes) -> dict[str, str]:
    records, at = {}, 0
    while at < len(data) and data[at : at + 1] != b"\0":
        space = data.find(b" ", at)
        try:
            length = int(data[at:space])
        except ValueError:
            raise TarError(f"malformed pax record at byte {at}") from None
        if space < 0 or length <= space - at or at + length > len(data):
            raise TarError(f"malformed pax record length {length} at byte {at}")
        key, _, value = data[space + 1 : at + length - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        at += length
    return records


def _check_end_of_archive(stream: BinaryIO) -> None:
    """Only zero padding may follow the first end-of-archive block. Reading it to the
    end also makes a gzip stream verify its CRC: a corrupt deflate stream can decode
    to a zero block mid-archive, and stopping there would hide the damage."""
    while chunk := stream.read(1 << 16):
        if chunk.count(0) != len(chunk):
            raise TarError("data after the end-of-archive block (corrupt or concatenated archive)")


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file, in archive order; raises TarError on damage."""
    next_name: str | None = None
    next_size: int | None = None
    first = True
    while True:
        header = _read(stream, BLOCK)
        if not header:
            if first:
                raise TarError("empty shard (no bytes)")
            return  # no end-of-archive blocks after a complete member: accepted, as tarfile does
        first = False
        if header == ZERO_BLOCK:
            _check_end_of_archive(stream)
            return
        if len(header) < BLOCK:
            raise TarError(f"truncated tar header ({len(header)} of {BLOCK} bytes)")
        stored = _number(header[148:156], "checksum")
        if stored != sum(header) - sum(header[148:156]) + 8 * 32:
            raise TarError("tar header checksum mismatch (corrupt or not a tar file)")
        size = _number(header[124:136], "size") if next_size is None else next_size
        data = _read(stream, size)
        if len(data) < size:
            raise TarError(f"truncated tar member ({len(data)} of {size} bytes)")
        if len(_read(stream, -size % BLOCK)) < -size % BLOCK:
            raise TarError("truncated tar member padding")
        kind = header[156:157]
        if kind == b"x":
            pax = _pax_records(data)
            next_name = pax.get("path", next_name)
            next_size = int(pax["size"]) if "size" in pax else None
            continue
        if kind == b"L":
            next_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if header[257:263] == b"ustar\0" and header[345] != 0:  # POSIX, not GNU's "ustar  "
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            name = f"{prefix}/{name}"
        if kind in REGULAR:
            yield (next_name or name), data
        next_name, next_size = None, None


def tar_samples(stream: BinaryIO, url: str) -> Iterator[dict]:
    """webdataset samples `{"__key__", "__url__", field: bytes, ...}` of a tar stream."""
    sample: dict | None = None
    try:
        for name, data in tar_members(stream):
            if SKIPPED.match(name) or ("/" not in name and name.startswith("__")):
                continue
            match = KEY_AND_FIELD.match(name)
            if not match:
                continue
            key, field = match.group(1), match.group(2).lower()
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            if field in sample:
                raise TarError(f"{name}: field {field!r} appears twice in sample {key!r}")
            sample[field] = data
    except Exception:  # TarError, or the stream's own (gzip CRC): members read before it count
        if sample is not None:
            yield sample
        raise
    if sample is not None:
        yield sample

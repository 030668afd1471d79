"""WebDataset tar shards: the member index of one shard, its samples, and reading a member's
bytes by offset.

WebDataset's conventions (github.com/webdataset/webdataset): a shard is a plain POSIX tar; a
member ``<key>.<ext>`` belongs to the sample ``<key>``, where the key ends at the first dot of
the member's base name and keeps its folders (``cat/IMG_01.left.jpg``: key ``cat/IMG_01``, field
``left.jpg``); the field's extension is compared in lower case. A sample here is one image
member (any format Pillow reads, by its last extension) with its label in ``<key>.cls`` (an
integer: a class index) or in ``<key>.json`` (``label``: a class name or index; optionally
``group``, ``split`` and the columns of ``ingest.extra_columns``); other fields (``.txt``
captions, ...) are ignored. The sample's path is its image member's name (``cat/IMG_01.left.jpg``).

The headers are read by :func:`scan_tar`, not :mod:`tarfile`: tarfile builds a ``TarInfo`` per
member at ~100 us on this machine, a shard of a million members then takes minutes; reading the
512-byte headers directly takes a few us a member. It reads ustar, PAX (``path``, ``size``) and
GNU long names, checks every header's checksum, and refuses what a shard never holds with one
line naming the shard and the member: a compressed shard, links and devices, a name that is
absolute or has a ``..`` part, a key or member twice, a truncated archive (a member past the end
of the file, or no end-of-archive block). Nothing is ever extracted to disk: an image's bytes are
read at its offset (:class:`TarPayloads`).
"""

from __future__ import annotations

import json
import os
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from curate.data.catalog import NOT_AN_IMAGE, Skipped
from curate.data.folder import image_suffixes
from curate.data.metadata import SPLITS, nfc
from curate.errors import CurateError

BLOCK = 512
KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
REGULAR, DIRECTORY = (b"0", b"\0", b"7"), b"5"
PAX, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK = b"x", b"g", b"L", b"K"
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
OPEN_SHARDS = 64  # file descriptors a reading process keeps open (least recently used closed first)
RECORD = 20 * BLOCK  # an archive ends padded to a multiple of this, as tar and tarfile pad it
MAX_SIZE = 8**11  # a member size the 12-byte octal field holds


class Member(NamedTuple):
    name: str  # NFC, relative to the shard
    offset: int  # of its data in the file
    size: int


def split_key(name: str) -> tuple[str, str] | None:
    """WebDataset's (key, field) of a member name; None for a name without an extension."""
    match = KEY.match(name)
    return (match.group(1), match.group(2)) if match else None


def is_image_name(name: str) -> bool:
    """Whether a file of this name is read as an image: its last extension, in any case, as
    ``Path.suffix`` gives it (string slicing: a ``PurePosixPath`` costs ~10 us a member)."""
    base = name[name.rfind("/") + 1 :]
    dot = base.rfind(".")
    return dot > 0 and base[dot:].lower() in image_suffixes()


def _number(field_bytes: bytes) -> int:
    """A numeric header field: octal ASCII, or GNU's base-256 when the top bit is set."""
    if field_bytes[0] & 0x80:
        return int.from_bytes(field_bytes[1:], "big")
    text = field_bytes.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[str, str]:
    """A PAX extended header's ``<length> <key>=<value>\\n`` records."""
    records, at = {}, 0
    while at < len(data) and data[at] != 0:
        length = int(data[at : data.index(b" ", at)])
        key, _, value = data[data.index(b" ", at) + 1 : at + length - 1].partition(b"=")
        records[key.decode("utf-8")] = value.decode("utf-8")
        at += length
    return records


def scan_tar(path: Path) -> Iterator[Member]:
    """The regular-file members of a tar shard, in file order (folders skipped), named as paths
    inside the shard (:func:`inside`)."""
    size = path.stat().st_size
    with open(path, "rb", buffering=1 << 20) as handle:
        start = handle.read(6)
        for magic, kind in COMPRESSED.items():
            if start.startswith(magic):
                raise CurateError(
                    f"{path}: a {kind}-compressed tar; ingest reads plain tars by offset (decompress it)"
                )
        offset, long_name, pax = 0, None, {}
        while True:
            handle.seek(offset)
            header = handle.read(BLOCK)
            if len(header) < BLOCK:
                end = (
                    "an empty file" if size == 0 else f"truncated at byte {size:,} (no end-of-archive block)"
                )
                raise CurateError(f"{path}: {end}")
            if header == bytes(BLOCK):
                return
            name, data, length, kind = _header(path, offset, header, long_name, pax)
            if data + length > size:
                raise CurateError(f"{path}: truncated: member {name!r} ends past the end of the file")
            offset = data + -(-length // BLOCK) * BLOCK
            if kind in (PAX, GNU_LONGNAME):
                handle.seek(data)
                payload = handle.read(length)
                if kind == PAX:
                    pax = _pax_records(payload)
                else:
                    long_name = payload.split(b"\0", 1)[0].decode("utf-8")
                continue
            long_name, pax = None, {}
            if kind in REGULAR:
                yield Member(inside(path, name), data, length)
            elif kind not in (DIRECTORY, PAX_GLOBAL, GNU_LONGLINK):
                what = {b"1": "a hard link", b"2": "a symlink"}.get(kind, f"of type {kind!r}")
                raise CurateError(f"{path}: member {name!r} is {what}; a shard holds regular files only")


def _header(
    path: Path, offset: int, header: bytes, long_name: str | None, pax: dict[str, str]
) -> tuple[str, int, int, bytes]:
    """One header's member name (PAX and GNU long names applied, NFC), data offset, size and type."""
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32  # the checksum field counts as spaces
    try:
        stored: int | None = int(header[148:156].split(b"\0", 1)[0].strip(), 8)
        length = int(pax["size"]) if "size" in pax else _number(header[124:136])
    except ValueError:
        stored = None
    if stored != unsigned and stored != _signed_checksum(header):
        raise CurateError(f"{path}: not a tar, or damaged: bad header at byte {offset:,}")
    try:
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        if header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
    except UnicodeDecodeError:
        raise CurateError(f"{path}: member name at byte {offset:,} is not UTF-8") from None
    name = nfc(pax.get("path", long_name or name))
    return name, offset + BLOCK, length, header[156:157]


def _signed_checksum(header: bytes) -> int:
    """The checksum some old tars wrote, summing bytes as signed chars (a rare case: computed late)."""
    return sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 8 * 32


def inside(path: Path, name: str) -> str:
    """A member name as a path relative to the shard (a leading ``./`` dropped); one that is
    absolute or has an empty, ``.`` or ``..`` part stops the run."""
    relative = name
    while relative.startswith("./"):
        relative = relative[2:]
    if relative.startswith("/") or any(part in ("", ".", "..") for part in relative.split("/")):
        raise CurateError(f"{path}: member {name!r} is not a path inside the shard (absolute, or with '..')")
    return relative


def member_header(name: str, size: int) -> bytes:
    """A regular file's header exactly as :mod:`tarfile` writes it in PAX format with every field
    fixed (mode 0644, uid and gid 0, no user or group name, mtime 0): a PAX ``path`` record
    first when the name is not ASCII or longer than 100 bytes. Written here because building a
    ``TarInfo`` costs ~65 us a member, minutes for a million images."""
    if size >= MAX_SIZE:
        raise CurateError(f"{name}: {size:,} bytes, more than a tar member holds without PAX sizes")
    encoded = name.encode("utf-8")
    if name.isascii() and len(encoded) <= 100:
        return _ustar(encoded, size, b"0", b"0000644\0")
    record = _pax_record("path", encoded)
    pax = _ustar(b"././@PaxHeader", len(record), PAX, b"0000000\0") + record + bytes(padding(len(record)))
    return pax + _ustar(name.encode("ascii", "replace")[:100], size, b"0", b"0000644\0")


def padding(size: int) -> int:
    """NUL bytes after ``size`` bytes of data, to the next 512-byte block."""
    return -size % BLOCK


def _ustar(name: bytes, size: int, kind: bytes, mode: bytes) -> bytes:
    header = bytearray(BLOCK)
    header[: len(name)] = name
    header[100:148] = mode + b"0000000\0" * 2 + b"%011o\0" % size + b"00000000000\0"
    header[148:157] = b" " * 8 + kind
    header[257:265] = b"ustar\x0000"
    header[148:155] = b"%06o\0" % sum(header)  # the checksum counts its own field as 8 spaces
    return bytes(header)


def _pax_record(key: str, value: bytes) -> bytes:
    """``<length> <key>=<value>\\n``, the length counting its own digits."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body)
    while len(str(length).encode()) + len(body) != length:
        length = len(str(length).encode()) + len(body)
    return str(length).encode() + body


def write_tar(handle: Any, members: Iterator[tuple[str, bytes]]) -> int:
    """Write ``members`` (name, bytes) as a tar to an open binary file, end-of-archive blocks and
    record padding included (tarfile's bytes for the same members); the bytes written."""
    written = 0
    for name, data in members:
        header = member_header(name, len(data))
        handle.write(header)
        handle.write(data)
        handle.write(bytes(padding(len(data))))
        written += len(header) + len(data) + padding(len(data))
    end = 2 * BLOCK + (-(written + 2 * BLOCK) % RECORD)
    handle.write(bytes(end))
    return written + end


@dataclass
class ShardIndex:
    """One shard's samples, as a worker sends them to the main process: compact (locators in a
    typed array; a value repeated across samples is one object, which pickle sends once)."""

    paths: list[str] = field(default_factory=list)  # the image member's name, the row's path
    # Pairs: tar (offset, size), parquet (row group, row).
    locators: array = field(default_factory=lambda: array("q"))
    labels: list[Any] = field(default_factory=list)  # a class index (int) or a class name (str)
    fields: dict[str, list[str]] = field(default_factory=dict)  # column -> one value per sample
    skipped: list[Skipped] = field(default_factory=list)
    names: list[str] | None = None  # the class names the shard declares (Parquet's ClassLabel)
    image_column: tuple[str, bool] = ("", False)  # Parquet: the image column; whether a {bytes, path} struct
    _same: dict[Any, Any] = field(default_factory=dict, repr=False)

    def add(self, path: str, locator: tuple[int, int], label: Any, values: dict[str, str]) -> None:
        """One sample; ``values``: its columns ('' for a column it lacks)."""
        count = len(self.paths)
        for column, value in values.items():
            self.fields.setdefault(column, [""] * count).append(self._same.setdefault(value, value))
        if len(values) != len(self.fields):  # a sample without a column others have
            for cells in self.fields.values():
                if len(cells) == count:
                    cells.append("")
        self.paths.append(path)
        self.locators.extend(locator)
        self.labels.append(self._same.setdefault(label, label))


def index_tar(path: Path, columns: tuple[str, ...]) -> ShardIndex:
    """The samples of one tar shard: each image member with its label and its ``columns`` (from
    ``<key>.json``); a sample without an image member is skipped (not an image)."""
    members: dict[str, dict[str, Member]] = {}
    names: set[str] = set()
    index = ShardIndex()
    for member in scan_tar(path):
        name = member.name
        if name in names:
            raise CurateError(f"{path}: member {name!r} is in the shard twice")
        names.add(name)
        parts = split_key(name)
        if parts is None:
            index.skipped.append(Skipped(name, NOT_AN_IMAGE, "no extension: not a field of a sample"))
            continue
        members.setdefault(parts[0], {})[parts[1].lower()] = member
    if not names:
        raise CurateError(f"{path}: an empty shard (no member)")
    with open(path, "rb") as handle:
        for key, fields in members.items():
            images = [member for extension, member in fields.items() if is_image_name(f"x.{extension}")]
            if len(images) > 1:
                shown = ", ".join(member.name for member in images)
                raise CurateError(f"{path}: key {key!r} twice: one sample, two images ({shown})")
            if not images:
                first = next(iter(fields.values())).name
                index.skipped.append(Skipped(first, NOT_AN_IMAGE, "no image member in its sample"))
                continue
            label, values = _label_and_fields(path, key, fields, handle, columns)
            index.add(images[0].name, (images[0].offset, images[0].size), label, values)
    return index


def _read(handle: Any, member: Member) -> bytes:
    handle.seek(member.offset)
    return handle.read(member.size)


def _label_and_fields(
    path: Path, key: str, fields: dict[str, Member], handle: Any, columns: tuple[str, ...]
) -> tuple[Any, dict[str, str]]:
    """A sample's label (``.cls``, else ``.json``'s ``label``) and its other columns."""
    record: dict[str, Any] = {}
    if "json" in fields:
        where = fields["json"].name
        try:
            record = json.loads(_read(handle, fields["json"]))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CurateError(f"{path}: {where}: not valid JSON ({exc})".splitlines()[0]) from None
        if not isinstance(record, dict):
            raise CurateError(f"{path}: {where}: not a JSON object")
    if "cls" in fields:
        digits = _read(handle, fields["cls"]).decode("utf-8", "replace").strip()
        if not re.fullmatch(r"-?[0-9]+", digits):
            raise CurateError(f"{path}: {fields['cls'].name}: {digits[:40]!r} is not an integer class index")
        if "label" in record and record["label"] != int(digits):
            raise CurateError(f"{path}: key {key!r}: .cls says {digits}, .json's label {record['label']!r}")
        record["label"] = int(digits)
    if "label" not in record:
        raise CurateError(f"{path}: key {key!r} has no label (a .cls member, or 'label' in its .json)")
    label = record["label"]
    if isinstance(label, bool) or not isinstance(label, int | str):
        raise CurateError(f"{path}: key {key!r}: label {label!r} is neither a class name nor a class index")
    values = {column: text(record[column]) for column in columns if column in record}
    check_split(values, f"{path}: key {key!r}")
    return label, values


def text(value: Any) -> str:
    """A field's value as a table cell: None (JSON null, a Parquet null) is empty."""
    return "" if value is None else str(value)


def check_split(values: dict[str, str], where: str) -> None:
    """A sample's own split, stripped: train, test, or '' (the keyed split decides)."""
    if "split" in values:
        values["split"] = values["split"].strip()
        if values["split"] not in (*SPLITS, ""):
            raise CurateError(f"{where}: split {values['split']!r} is not 'train' or 'test'")


@dataclass
class TarPayloads:
    """Images in tar shards: entry ``i`` is ``size[i]`` bytes at ``offset[i]`` of ``shards[shard_of[i]]``,
    read with one ``pread`` (descriptors opened lazily in each process, a bounded number)."""

    shards: list[Path]
    shard_of: np.ndarray  # (N,) int
    locators: np.ndarray  # (N, 2) int64: offset, size
    _open: dict[int, int] = field(default_factory=dict, repr=False)  # shard -> descriptor, oldest first

    def read(self, entry: int) -> bytes:
        shard = int(self.shard_of[entry])
        offset, size = (int(n) for n in self.locators[entry])
        if shard in self._open:
            descriptor = self._open[shard] = self._open.pop(shard)
        else:
            if len(self._open) >= OPEN_SHARDS:
                os.close(self._open.pop(next(iter(self._open))))
            descriptor = self._open[shard] = os.open(self.shards[shard], os.O_RDONLY)
        data = os.pread(descriptor, size, offset)
        if len(data) != size:
            raise OSError(0, "the shard is shorter than when it was listed")
        return data

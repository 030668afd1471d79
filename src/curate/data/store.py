"""A pixel store DVC can deduplicate: a folder of immutable segments plus an index.

Layout of a store folder (``data/raw/images``, ``data/augmented/images``)::

    index.json         {"format": 1, "shape": [H, W, C], "segments": [{"name": ..., "rows": n}, ...]}
    <digest>.npy       uint8 n x H x W x C, named by the SHA-256 of its rows (immutable)

The store's rows are the segments' rows in index order; a sample table's ``row`` is that
global row number. Rows come sorted by a key the caller chooses so that new data tends to
extend it (ingest: the source path without its class folder, so a relabel moves no pixels),
and a segment ends after a row whose key hashes under ``2**64 / target`` (a content-defined
boundary, as in FastCDC or a prolly tree): inserting or deleting rows changes only the
segment they land in, every other segment keeps its bytes, its name, and DVC's cache entry.
Normalised as FastCDC does: no cut before ``target / 4`` rows, a forced cut at ``4 * target``,
so no segment is tiny or huge. The boundaries depend only on the rows and their keys:
a store built from scratch has the same bytes as one rebuilt after any history of edits.

DVC hashes each segment once (it is a file of a directory out) and uploads only the segments
a version adds. Segment names are content hashes, so a store's identity is its ``index.json``:
lineage hashes that small file instead of the pixels (:func:`store_digest`).
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError

INDEX = "index.json"
FORMAT = 1
MIN_SHARE, MAX_FACTOR = 4, 4  # no cut before target / 4 rows; a forced cut at 4 x target
NAME_DIGITS = 32  # hex digits of a segment's SHA-256 in its file name
WRITE_CHUNK = 1024  # rows handed to a writer at a time when a whole array is stored
OPEN_SEGMENTS = 256  # memory-maps a reader keeps open (least recently used closed first)


def target_rows(segment_mb: float, row_shape: tuple[int, ...]) -> int:
    """Rows per segment on average: ``segment_mb`` MiB of decoded rows (at least 1)."""
    return max(1, int(segment_mb * (1 << 20)) // int(np.prod(row_shape)))


def key_hash(key: str) -> int:
    """A key's 64-bit hash (the first 8 bytes of its SHA-256): where content-defined cuts go."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def is_cut(key: str, rows_in_segment: int, target: int) -> bool:
    """Whether a segment holding ``rows_in_segment`` rows, the last keyed ``key``, ends here."""
    if rows_in_segment >= MAX_FACTOR * target:
        return True
    return rows_in_segment >= max(1, target // MIN_SHARE) and key_hash(key) < (1 << 64) // target


def _header(rows: int, row_shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header ``np.save`` writes for ``rows`` rows (its length does not depend on
    ``rows``: numpy pads it so the first axis can grow, which lets a segment stream to disk)."""
    buffer = io.BytesIO()
    fields = {"descr": "|u1", "fortran_order": False, "shape": (rows, *row_shape)}
    np.lib.format.write_array_header_1_0(buffer, fields)
    return buffer.getvalue()


class _Segment:
    """One segment being written: rows stream into a temp file while their digest grows."""

    def __init__(self, folder: Path, row_shape: tuple[int, ...]) -> None:
        self.row_shape = row_shape
        fd, name = tempfile.mkstemp(prefix=".segment.", suffix=".tmp", dir=folder)
        self.path, self.handle = Path(name), os.fdopen(fd, "wb")
        self.reserved = len(_header(0, row_shape))
        self.handle.write(b"\0" * self.reserved)
        self.digest = hashlib.sha256(repr(row_shape).encode())
        self.rows = 0

    def write(self, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=np.uint8).tobytes()
        self.digest.update(data)
        self.handle.write(data)
        self.rows += len(rows)

    def close(self) -> dict[str, Any]:
        """Finish the file and rename it after its content; its index entry."""
        header = _header(self.rows, self.row_shape)
        if len(header) != self.reserved:  # numpy's padding changed: never with format 1.0 today
            raise RuntimeError(f"npy header length {len(header)} != {self.reserved}")
        self.handle.seek(0)
        self.handle.write(header)
        self.handle.close()
        name = f"{self.digest.hexdigest()[:NAME_DIGITS]}.npy"
        self.path.chmod(0o644)
        os.replace(self.path, self.path.parent / name)
        return {"name": name, "rows": self.rows}

    def discard(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)


class StoreWriter:
    """Write a store row by row; :meth:`close` publishes it.

    The caller appends rows in the store's sort order, each with its cut key (what the boundary
    hash sees: something stable about the row, such as its source path without the class folder).
    Memory holds one row at a time, whatever the store's size. Until :meth:`close` writes
    ``index.json`` (atomically, last) the folder's previous index and segments stay valid;
    close then deletes the segments the new index does not name.
    """

    def __init__(self, folder: str | Path, row_shape: tuple[int, ...], target: int) -> None:
        self.folder = Path(folder)
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.created = missing[-1] if missing else None  # what abort removes: nothing was there
        self.folder.mkdir(parents=True, exist_ok=True)
        self.closed = False
        for leftover in self.folder.glob(".segment.*.tmp"):
            leftover.unlink()
        self.row_shape, self.target = tuple(int(n) for n in row_shape), target
        self.segments: list[dict[str, Any]] = []
        self.current: _Segment | None = None

    def append(self, rows: np.ndarray, cut_keys: Iterable[str]) -> None:
        """Add rows (``n x H x W x C`` uint8), the next in the store's order, with their cut keys."""
        for row, key in zip(rows, cut_keys, strict=True):
            if row.shape != self.row_shape:
                raise ValueError(f"row of shape {row.shape} in a store of {self.row_shape}")
            if self.current is None:
                self.current = _Segment(self.folder, self.row_shape)
            self.current.write(row[None])
            if is_cut(key, self.current.rows, self.target):
                self.segments.append(self.current.close())
                self.current = None

    def close(self) -> int:
        """Publish the store (``index.json``) and remove segments it no longer names; its row count."""
        if self.current is not None:
            self.segments.append(self.current.close())
            self.current = None
        index = {"format": FORMAT, "shape": list(self.row_shape), "segments": self.segments}
        fd, name = tempfile.mkstemp(prefix=".index.", suffix=".tmp", dir=self.folder)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(index, indent=1) + "\n")
        Path(name).chmod(0o644)
        os.replace(name, self.folder / INDEX)
        named = {segment["name"] for segment in self.segments}
        for path in self.folder.glob("*.npy"):
            if path.name not in named:
                path.unlink()
        self.closed = True
        return sum(segment["rows"] for segment in self.segments)

    def abort(self) -> None:
        """Unless published, remove what this writer wrote: a failed stage leaves the previous
        store as it was, or nothing where there was none."""
        if self.current is not None:
            self.current.discard()
            self.current = None
        if self.closed:
            return
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        try:
            kept = {segment["name"] for segment in json.loads((self.folder / INDEX).read_text())["segments"]}
        except (OSError, ValueError, KeyError, TypeError):
            kept = set()
        for segment in self.segments:
            if segment["name"] not in kept:
                (self.folder / segment["name"]).unlink(missing_ok=True)


def write_store(
    folder: str | Path, images: np.ndarray, order: np.ndarray, cut_keys: list[str], target: int
) -> np.ndarray:
    """Write ``images`` as a store in the order ``order`` (positions into ``images``), cut by
    ``cut_keys`` (one per image); each image's global row in the store."""
    writer = StoreWriter(folder, images.shape[1:], target)
    try:
        for start in range(0, len(order), WRITE_CHUNK):
            chunk = order[start : start + WRITE_CHUNK]
            writer.append(images[chunk], [cut_keys[i] for i in chunk])
        writer.close()
    finally:
        writer.abort()
    rows = np.empty(len(order), dtype=np.int64)
    rows[order] = np.arange(len(order))
    return rows


class Store:
    """A store opened for reading: an array-like ``N x H x W x C`` uint8 over memory-mapped segments.

    ``store[i]`` is one image, ``store[rows]`` (an int array) the images at those global rows in
    that order, ``store[a:b]`` a range. Each segment is read in sorted row order and its pages are
    released after the read (they stay in the page cache), so streaming a store holds no more of
    it in memory than the rows asked for. Missing, truncated or garbled files stop with one line
    naming the file and the stage that writes it (``producer``).
    """

    def __init__(self, folder: str | Path, producer: str) -> None:
        self.folder, self.producer = Path(folder), producer
        index = self._read_index()
        self.row_shape = tuple(index["shape"])
        self.names = [segment["name"] for segment in index["segments"]]
        counts = np.array([segment["rows"] for segment in index["segments"]], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.shape = (int(self.starts[-1]), *self.row_shape)
        self.dtype, self.ndim = np.dtype(np.uint8), 4
        self._maps: dict[int, np.ndarray] = {}
        header, row_bytes = len(_header(0, self.row_shape)), int(np.prod(self.row_shape))
        for name, rows in zip(self.names, counts, strict=True):
            self._check_size(self.folder / name, header + int(rows) * row_bytes)

    def _fail(self, path: Path, what: str) -> CurateError:
        return CurateError(f"{path}: {what}; re-run the {self.producer} stage (dvc repro)")

    def _read_index(self) -> dict[str, Any]:
        path = self.folder / INDEX
        if not path.is_file():
            what = "not found" if not self.folder.exists() else "missing (the store has no index)"
            raise self._fail(path, what)
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            shape = [int(n) for n in index["shape"]]
            if index["format"] != FORMAT or len(shape) != 3:
                raise ValueError(f"format {index['format']}, shape {shape}")
            for segment in index["segments"]:
                if not isinstance(segment["name"], str) or "/" in segment["name"] or segment["rows"] < 1:
                    raise ValueError(f"segment {segment}")
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise self._fail(path, f"not a store index ({type(exc).__name__}: {exc})") from None
        return index

    def _check_size(self, path: Path, expected: int) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise self._fail(path, "segment not found") from None
        if size != expected:
            raise self._fail(
                path, f"segment of {size:,} bytes, expected {expected:,} (truncated or replaced)"
            )

    def _segment(self, index: int) -> np.ndarray:
        if index in self._maps:
            self._maps[index] = self._maps.pop(index)  # most recently used last
        else:
            if len(self._maps) >= OPEN_SEGMENTS:  # each map holds a file descriptor
                del self._maps[next(iter(self._maps))]
            path = self.folder / self.names[index]
            try:
                images = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise self._fail(path, f"not a readable segment ({exc})".splitlines()[0]) from None
            expected = (int(self.starts[index + 1] - self.starts[index]), *self.row_shape)
            if images.dtype != np.uint8 or images.shape != expected:
                raise self._fail(
                    path, f"segment holds {images.dtype} {images.shape}, expected uint8 {expected}"
                )
            self._maps[index] = images
        return self._maps[index]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, int | np.integer):
            if not -len(self) <= key < len(self):
                raise IndexError(f"row {key} of a store of {len(self)} rows")
            return self.take(np.array([key % len(self)]))[0]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        return self.take(np.asarray(key, dtype=np.int64))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The images at global ``rows``, in that order, as a new array."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside a store of {len(self)} rows")
        out = np.empty((len(rows), *self.row_shape), dtype=np.uint8)
        order = np.argsort(rows, kind="stable")
        segment_of = np.searchsorted(self.starts, rows[order], side="right") - 1
        bounds = np.flatnonzero(np.diff(segment_of)) + 1
        for part in np.split(np.arange(len(order)), bounds):
            if len(part):
                index = int(segment_of[part[0]])
                images = self._segment(index)
                out[order[part]] = images[rows[order[part]] - self.starts[index]]
                release_pages(images)
        return out

    def read(self, index: np.ndarray | None = None) -> np.ndarray:
        """The images at ``index`` (all when None), as :class:`curate.data.image_rows.ImageRows` reads."""
        return self.take(np.arange(len(self)) if index is None else index)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        images = self.read()
        return images if dtype is None else images.astype(dtype, copy=False)


def release_pages(images: np.ndarray) -> None:
    """Unmap the pages of a memory-mapped array that a read touched. They stay in the page cache
    (reading them again costs no disk I/O) but stop counting as this process's memory: without
    this, streaming a store in random batches holds all of it resident (benchmarks/README.md)."""
    mapping = getattr(images, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def store_digest(folder: str | Path) -> str | None:
    """A store's identity for lineage: the SHA-256 of its ``index.json``, which names every
    segment by the digest of its rows; None when the index or a segment is missing or of the
    wrong size. Costs a stat per segment, not a read of the pixels (DVC verifies their bytes)."""
    folder = Path(folder)
    try:
        index_bytes = (folder / INDEX).read_bytes()
        Store(folder, "")
    except (OSError, CurateError):
        return None
    return hashlib.sha256(index_bytes).hexdigest()


def is_store(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / INDEX).is_file()


class RevisionRows:
    """One revision's store read through ``read(path) -> bytes | None`` (git / DVC, any revision):
    its index at once, a segment only when one of its rows is asked for. ``rows[i]`` is an image."""

    def __init__(self, read: Callable[[Path], bytes | None], folder: Path, index: dict[str, Any]) -> None:
        self.read, self.folder = read, folder
        self.names = [segment["name"] for segment in index["segments"]]
        self.starts = np.cumsum([0] + [segment["rows"] for segment in index["segments"]])
        self._segments: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, read: Callable[[Path], bytes | None], folder: Path) -> RevisionRows | None:
        """The revision's store, or None when it has none (or its data is in no cache)."""
        data = read(folder / INDEX)
        if data is None:
            return None
        try:
            return cls(read, folder, json.loads(data))
        except (ValueError, KeyError, TypeError) as exc:
            raise CurateError(f"{folder / INDEX}: not a store index ({exc})") from None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, row: int) -> np.ndarray:
        index = int(np.searchsorted(self.starts, row, side="right")) - 1
        if index not in self._segments:
            path = self.folder / self.names[index]
            data = self.read(path)
            if data is None:
                raise CurateError(f"{path}: segment not found in the workspace or any DVC cache")
            try:
                self._segments[index] = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise CurateError(f"{path}: not a readable segment ({exc})".splitlines()[0]) from None
        return self._segments[index][row - self.starts[index]]

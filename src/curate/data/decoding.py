"""Decode source images, in several processes, in order: what ingest streams into a store.

A source's images are entries of a :class:`Payloads`: loose files (:class:`FilePayloads`), or
members of tar shards and rows of Parquet shards (:mod:`curate.data.shards`), each read by its
entry number in whichever process decodes it. Each entry is read, hashed and decoded in a
worker; the results come back in the order the entries were given (``Pool.imap``), so the store
and the table are byte-identical whatever the number of workers. Only a bounded window of
decoded images is in flight at any time, and a task is an entry number, so memory does not grow
with the number of images.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from curate.data.imaging import conform
from curate.params import ImageParams

CHUNK = 8  # entries per task sent to a worker: amortises the inter-process round trip
WINDOW = 512  # entries in flight at most: bounds the decoded images waiting to be written

Item = TypeVar("Item")
Result = TypeVar("Result")


class Decoded(NamedTuple):
    pixels: np.ndarray | None  # size x size x channels uint8; None: unreadable
    mode: str
    size: tuple[int, int]
    frames: int
    digest: str  # 16 hex digits of the file's SHA-256 (the sample id before de-duplication)
    failure: str = ""  # why the file is unreadable


class Payloads(Protocol):
    """Where a source's images are: ``read(entry)`` is one image's encoded bytes. Picklable, and
    cheap to copy into a worker (paths and compact arrays; open handles made lazily per process)."""

    def read(self, entry: int) -> bytes: ...


@dataclass(frozen=True)
class FilePayloads:
    """Loose files: entry ``i`` is the file ``files[i]``."""

    files: Sequence[Path]

    def read(self, entry: int) -> bytes:
        return Path(self.files[entry]).read_bytes()


def worker_count(workers: str | int) -> int:
    """``ingest.workers``: ``auto`` is the CPU cores this process may use."""
    if workers != "auto":
        return int(workers)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_payload(payload: bytes, image: ImageParams, rescale_16bit: str) -> Decoded:
    """One file's first frame, conformed to ``image``; ``frames`` counts them all."""
    digest = hashlib.sha256(payload).hexdigest()[:16]
    with Image.open(io.BytesIO(payload)) as picture:
        picture.load()
        pixels = conform(picture, image.size, image.channels, rescale_16bit)
        return Decoded(pixels, picture.mode, picture.size, getattr(picture, "n_frames", 1), digest)


def decode_entry(payloads: Payloads, entry: int, image: ImageParams, rescale_16bit: str) -> Decoded:
    """:func:`decode_payload` of one entry; an unreadable one comes back with its reason."""
    try:
        return decode_payload(payloads.read(entry), image, rescale_16bit)
    # Pillow's decoders raise OSError, ValueError, SyntaxError, EOFError, struct.error and
    # more on a damaged file: whatever the type, the file is unreadable, not the run broken.
    except Exception as exc:  # noqa: BLE001
        return Decoded(None, "", (0, 0), 0, "", describe_failure(exc))


def describe_failure(exc: Exception) -> str:
    """A short, run-independent reason (no object addresses, no absolute paths)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(exc, OSError) and exc.strerror:  # errno errors would quote the absolute path
        return f"{type(exc).__name__}: {exc.strerror}"
    message = re.sub(r"<[^<>]* at 0x[0-9a-f]+>", "data", str(exc)).splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")


_settings: tuple[Payloads, ImageParams, str] | None = None  # a worker's source and params, set once


def _init_worker(payloads: Payloads, image: ImageParams, rescale_16bit: str) -> None:
    global _settings  # noqa: PLW0603  (per-process state of a pool worker)
    _settings = (payloads, image, rescale_16bit)


def _decode_in_worker(entry: int) -> Decoded:
    assert _settings is not None
    payloads, image, rescale_16bit = _settings
    return decode_entry(payloads, entry, image, rescale_16bit)


def open_pool(workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Pool:
    """``workers`` processes, forked where the platform can: they start in milliseconds, import
    nothing again, and share the parent's index arrays instead of receiving a pickled copy."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method).Pool(workers, initializer=initializer, initargs=initargs)


def close_pool(pool: Pool) -> None:
    # close and join, not the context manager's terminate: when the reader stops early (a bad
    # file in fail mode), terminate kills workers that may hold the result queue's lock and its
    # join then waited minutes on a loaded machine; the tasks in flight finish in seconds instead.
    pool.close()
    pool.join()


def decode_in_order(
    payloads: Payloads, entries: np.ndarray, image: ImageParams, rescale_16bit: str, workers: int
) -> Iterator[Decoded]:
    """:func:`decode_entry` of each of ``entries``, in order, over ``workers`` processes (1: this one)."""
    if workers <= 1 or len(entries) <= CHUNK:
        for entry in entries:
            yield decode_entry(payloads, int(entry), image, rescale_16bit)
        return
    pool = open_pool(workers, _init_worker, (payloads, image, rescale_16bit))
    try:
        for start in range(0, len(entries), WINDOW):
            window = [int(entry) for entry in entries[start : start + WINDOW]]
            yield from pool.imap(_decode_in_worker, window, chunksize=CHUNK)
    finally:
        close_pool(pool)


def map_in_order(function: Callable[[Item], Result], items: Iterable[Item], workers: int) -> Iterator[Result]:
    """``function`` of each item, in order, over ``workers`` processes (1: this one): for work
    by whole shards (``function`` a module-level function; an exception it raises is raised here)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    pool = open_pool(min(workers, len(items)))
    try:
        yield from pool.imap(function, items)
    finally:
        close_pool(pool)

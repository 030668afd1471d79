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
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from curate.data.imaging import conform
from curate.params import ImageParams

# Entries a task decodes: up to MAX_CHUNK, and no more than CHUNK_BYTES of decoded pixels. A task
# costs the main process about a millisecond of the pool's round trip (its threads, a pickled
# result), whatever its size: with 32 px images at 8 entries a task the main process spent ~140 us
# an image on it, more than decoding one, and two workers were no faster than one; ~45 us at 64
# entries, ~25 us at 256 (the 1 MiB bound: 341 such images; 6 of 224 px).
MAX_CHUNK = 256
CHUNK_BYTES = 1 << 20
IN_FLIGHT = 4  # tasks queued or running per worker: one waits while the main process writes the last

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

    files: Sequence[str | Path]

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


def _decode_in_worker(entries: list[int]) -> tuple[np.ndarray | None, list[Decoded]]:
    """A task's entries decoded: the readable ones' pixels stacked in one array (one buffer to
    pickle, not one per image) and every entry's other fields."""
    assert _settings is not None
    payloads, image, rescale_16bit = _settings
    decoded = [decode_entry(payloads, entry, image, rescale_16bit) for entry in entries]
    readable = [result.pixels for result in decoded if result.pixels is not None]
    return (np.stack(readable) if readable else None), [result._replace(pixels=None) for result in decoded]


def _unstacked(task: tuple[np.ndarray | None, list[Decoded]]) -> Iterator[Decoded]:
    pixels, decoded = task
    at = 0
    for result in decoded:
        if result.failure:
            yield result
        else:
            yield result._replace(pixels=pixels[at])
            at += 1


def chunk_size(image: ImageParams, entries: int, workers: int) -> int:
    """Entries a task decodes: few enough that each worker gets ``IN_FLIGHT`` tasks (a small
    source still spreads over every worker), at most ``MAX_CHUNK`` and ``CHUNK_BYTES`` of pixels."""
    most = max(1, min(MAX_CHUNK, CHUNK_BYTES // (image.size * image.size * image.channels)))
    return max(1, min(most, -(-entries // (IN_FLIGHT * workers))))


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
    """:func:`decode_entry` of each of ``entries``, in order, over ``workers`` processes (1: this
    one). Tasks of :func:`chunk_size` entries, ``IN_FLIGHT`` per worker submitted ahead of the one
    being read (a sliding window: no worker idles at a window's end, and at most that many
    decoded images wait in memory)."""
    if workers <= 1 or len(entries) <= 1:
        for entry in entries:
            yield decode_entry(payloads, int(entry), image, rescale_16bit)
        return
    pool = open_pool(workers, _init_worker, (payloads, image, rescale_16bit))
    pending: deque[AsyncResult] = deque()
    size = chunk_size(image, len(entries), workers)
    try:
        for start in range(0, len(entries), size):
            task = [int(entry) for entry in entries[start : start + size]]
            pending.append(pool.apply_async(_decode_in_worker, (task,)))
            if len(pending) >= IN_FLIGHT * workers:
                yield from _unstacked(pending.popleft().get())
        while pending:
            yield from _unstacked(pending.popleft().get())
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

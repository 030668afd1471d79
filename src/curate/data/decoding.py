"""Decode source image files, in several processes, in order: what ingest streams into a store.

Each file is read, hashed and decoded in a worker; the results come back in the order the
files were given (``Pool.imap``), so the store and the table are byte-identical whatever the
number of workers. Only a bounded window of decoded images is in flight at any time, so
memory does not grow with the number of files.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from curate.data.imaging import conform
from curate.params import ImageParams

CHUNK = 8  # files per task sent to a worker: amortises the inter-process round trip
WINDOW = 512  # files in flight at most: bounds the decoded images waiting to be written


class Decoded(NamedTuple):
    pixels: np.ndarray | None  # size x size x channels uint8; None: unreadable
    mode: str
    size: tuple[int, int]
    frames: int
    digest: str  # 16 hex digits of the file's SHA-256 (the sample id before de-duplication)
    failure: str = ""  # why the file is unreadable


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


def decode_file(path: Path, image: ImageParams, rescale_16bit: str) -> Decoded:
    """:func:`decode_payload` of a file; an unreadable one comes back with its reason."""
    try:
        return decode_payload(path.read_bytes(), image, rescale_16bit)
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


_settings: tuple[ImageParams, str] | None = None  # a worker's image params, set once per process


def _init_worker(image: ImageParams, rescale_16bit: str) -> None:
    global _settings  # noqa: PLW0603  (per-process state of a pool worker)
    _settings = (image, rescale_16bit)


def _decode_in_worker(path: Path) -> Decoded:
    assert _settings is not None
    return decode_file(path, *_settings)


def decode_in_order(
    paths: Sequence[Path], image: ImageParams, rescale_16bit: str, workers: int
) -> Iterator[Decoded]:
    """:func:`decode_file` of each path, in order, over ``workers`` processes (1: this one)."""
    if workers <= 1 or len(paths) <= CHUNK:
        for path in paths:
            yield decode_file(path, image, rescale_16bit)
        return
    # fork where there is one: the workers start in milliseconds and import nothing again.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    pool = context.Pool(workers, initializer=_init_worker, initargs=(image, rescale_16bit))
    try:
        for start in range(0, len(paths), WINDOW):
            yield from pool.imap(_decode_in_worker, paths[start : start + WINDOW], chunksize=CHUNK)
    finally:
        # close and join, not the context manager's terminate: when the reader stops early (a
        # bad file in fail mode), terminate kills workers that may hold the result queue's lock
        # and its join then waited minutes on a loaded machine; the at most WINDOW files in
        # flight finish in seconds instead.
        pool.close()
        pool.join()

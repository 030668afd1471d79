"""Atomic writes: every write goes to a temp file in the target folder, then ``os.replace``.

A killed stage leaves the old file or the new one, never half of one; the next write to the same
target removes the temp file the killed one left.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _remove_stale_temps(target: Path) -> None:
    """Delete ``target``'s temp files left by a killed run: ``.{name}.<random>.tmp`` beside it.

    Only this target's own pattern (the random part has no dot, so ``.a.b.x.tmp`` of a
    target ``a.b`` is not ``a``'s). No live writer can own one: DVC runs one stage at a
    time in a workspace (it holds the repo lock) and each output has one writer stage.
    """
    prefix = f".{target.name}."
    for leftover in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        if "." not in leftover.name[len(prefix) : -len(".tmp")]:
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it over ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600 files; give outputs the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_array(target: str | Path, array: np.ndarray) -> None:
    """Store any numeric array as ``.npy`` (predicted probabilities, embeddings)."""
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)

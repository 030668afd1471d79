"""Lineage: the files one stage run read and wrote, with their SHA-256, for the gate stage.

A stage names each data file it reads or writes to its :class:`Lineage` (``read_samples(
lineage.input(INPUT))``, ``write_samples(lineage.output(OUTPUT), table)``); readers and writers
know nothing of it, and no module keeps it as state. The stage's writer
(:func:`curate.report.writer.write_stage`, or :meth:`Lineage.record` for the trainings, which
have no report) stores the record in ``reports/lineage/<stage>.json``, last, so the gate stage
can tell figures of the current data from figures of data that has changed since
(:func:`curate.curation.gates.stale_stages`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from curate.data.atomic import write_text
from curate.data.paths import REPORTS_DIR
from curate.data.store import is_store, store_digest

LINEAGE_DIR = "lineage"  # under the reports folder: reports/lineage/<stage>.json
DIGEST_CHUNK = 1 << 20


class Lineage:
    """What one stage run reads and writes, as the stage names the paths (relative to the workspace)."""

    def __init__(self) -> None:
        self.inputs: set[Path] = set()
        self.outputs: set[Path] = set()

    def input(self, path: str | Path) -> Path:
        """Note that the stage reads ``path``; returns it, so the call wraps the reader's argument."""
        self.inputs.add(Path(path))
        return Path(path)

    def input_files(self, paths: Iterable[str | Path]) -> None:
        """Note several inputs at once (the image stores a table's rows point into)."""
        for path in paths:
            self.input(path)

    def output(self, path: str | Path) -> Path:
        """Note that the stage writes ``path``; returns it, so the call wraps the writer's target."""
        self.outputs.add(Path(path))
        return Path(path)

    def digests(self, exclude: str | Path | None = None) -> dict[str, dict[str, str]]:
        """``{"inputs": {path: sha256}, "outputs": {...}}`` of the files noted.

        Files under ``exclude`` (the reports folder: reports describe data, they are not data)
        are left out, as is a noted file that does not exist (an absent review ledger). Paths are
        relative to the working directory, in POSIX form, so the record is the same on every machine.
        """
        skip = os.path.abspath(exclude) if exclude is not None else None
        record = {}
        for kind, paths in (("inputs", self.inputs), ("outputs", self.outputs)):
            kept = {_workspace_name(p): p for p in paths if skip is None or not _is_under(str(p), skip)}
            digests = {name: file_digest(path) for name, path in sorted(kept.items())}
            record[kind] = {name: digest for name, digest in digests.items() if digest is not None}
        return record

    def record(
        self, stage: str, reports_dir: str | Path = REPORTS_DIR, run: Mapping[str, Any] | None = None
    ) -> None:
        """Write ``<reports_dir>/lineage/<stage>.json``: the digests of what the stage read and wrote,
        and ``run``, what the run used (its params section, its declared metrics and gates).

        Written last by a stage: one killed before it keeps its previous record, whose digests no
        longer match its half-new outputs, so its figures read as stale, never as current.
        """
        record = self.digests(exclude=reports_dir) | ({"run": dict(run)} if run is not None else {})
        files = json.dumps(record, indent=2, sort_keys=True) + "\n"
        write_text(Path(reports_dir) / LINEAGE_DIR / f"{stage}.json", files)


def file_digest(path: str | Path) -> str | None:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks; None when there is no such file.

    A pixel store is not read: its digest is its index's (:func:`curate.data.store.store_digest`),
    whose segments are named by their content, so lineage costs a stat per segment instead of
    reading every pixel (benchmarks/README.md: lineage digests).
    """
    if is_store(path):
        return store_digest(path)
    if not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    buffer = bytearray(DIGEST_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _workspace_name(path: Path) -> str:
    # abspath, not resolve: with DVC's symlink cache a resolved path would name the cache file.
    absolute = Path(os.path.abspath(path))
    with contextlib.suppress(ValueError):
        return absolute.relative_to(Path.cwd()).as_posix()
    return absolute.as_posix()


def _is_under(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), folder]) == folder

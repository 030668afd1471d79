"""The review app's writer of the ledger: one line per decision, appended under a file lock.

Several servers (two reviewers, two browser tabs) may share one ledger, so every write is
read-check-append under an exclusive ``fcntl`` lock on the ledger itself: the lines other
writers appended since this server last looked are read first (the whole file, strictly,
through :func:`curate.data.ledger.read_ledger`, when its size or inode changed), then the new
decision is checked against the decisions that stand (:func:`curate.data.ledger.standing`) and
written with one ``write`` of a whole line, flushed and fsynced before the page is told.
A server killed mid-review therefore leaves whole lines only; each acknowledged decision is
on disk. Nothing is ever rewritten: an undo is one more line.

The one exception is the header of a ledger from before audits (no ``audit`` column): a line
with an audit cell would have one field more than it, which no CSV reader accepts, so the
first such line adds the column: the file is copied with the longer header and its other lines
byte for byte, and swapped in atomically (``os.replace``), locked before it replaces the old
one. A writer that waited on the old file's lock finds the path now names another file, and
opens that. Lines without an audit cell keep the header's own columns.
"""

from __future__ import annotations

import csv
import fcntl
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from curate.data import ledger
from curate.data.atomic import atomic_path
from curate.data.csvfile import csv_text


class Conflict(Exception):
    """The sample already has a standing decision (or, for an undo, none to take back)."""

    def __init__(self, message: str, first: dict | None) -> None:
        super().__init__(message)
        self.first = first  # the decision that stands, as :meth:`Journal.decide` returns it


@dataclass
class _Seen:
    size: int = -1
    inode: int = -1
    lines: int = 0  # lines in the file, the header included


class Journal:
    """The ledger at ``path`` for classes ``names``; ``reviewer`` signs every line written."""

    def __init__(self, path: Path, names: list[str], reviewer: str) -> None:
        self.path, self.names, self.reviewer = Path(path), names, reviewer
        self.standing: dict[str, dict] = {}  # sample key -> its standing decision
        self.version = 0  # bumped on every change seen, so callers can cache what they derive
        self._seen = _Seen()
        self.refresh()

    def refresh(self) -> None:
        """Re-read the ledger if it changed since last seen (another server appended)."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return
        if (status.st_size, status.st_ino) == (self._seen.size, self._seen.inode):
            return
        table = ledger.read_ledger(self.path)
        kept = ledger.standing(table, self.names, str(self.path))
        self.standing = {ledger.sample_key(row): self._record(line, row) for line, row in kept.iterrows()}
        self._seen = _Seen(status.st_size, status.st_ino, self.path.read_bytes().count(b"\n"))
        self.version += 1

    def decide(
        self, sample_id: str, path: str, decision: str, label: str = "", note: str = "", audit: str = ""
    ) -> dict:
        """Append ``decision`` on ``sample_id`` (``audit``: the band of an audit decision, else
        empty); its standing record. Raises ``CurateError`` (the ledger's own message) on a bad
        decision, label or band, :class:`Conflict` when the sample is decided already (or has
        nothing to undo)."""
        row = {"sample_id": sample_id, "path": path, "decision": decision, "label": label, "audit": audit}
        ledger.check_entry(row, self.names, f"{self.path} (new line)")
        with self._locked() as handle:
            first = self.standing.get(sample_id)
            if decision == ledger.UNDO and first is None:
                raise Conflict(f"sample {sample_id} has no decision standing: nothing to undo", None)
            if decision != ledger.UNDO and first is not None:
                raise Conflict(
                    f"sample {sample_id} was decided already on line {first['line']} "
                    f"({first['decision']}{' to ' + first['label'] if first['label'] else ''}"
                    f" by {first['reviewer'] or 'someone'}): undo it first",
                    first,
                )
            values = row | {"reviewer": self.reviewer, "note": " ".join(note.split())}
            self._write(handle, values)
            record = self._record(self._seen.lines, values)
            if decision == ledger.UNDO:
                del self.standing[sample_id]
            else:
                self.standing[sample_id] = record
            self.version += 1
            return record

    @contextmanager
    def _locked(self) -> Iterator:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            with open(self.path, "ab", buffering=0) as handle:  # unbuffered: one write() per call
                fcntl.flock(handle, fcntl.LOCK_EX)  # closing the handle releases it
                if not _still_at(handle, self.path):
                    # While this waited for the lock, another server swapped in a new file (the
                    # audit column added): a line appended to the old one would be lost.
                    continue
                if os.fstat(handle.fileno()).st_size == 0:  # a new ledger starts with its header
                    self._append(handle, csv_text(ledger.COLUMNS, []))
                self.refresh()
                yield handle
                return

    def _write(self, handle, values: dict) -> None:
        """One line of ``values`` in the header's columns; first the audit column, when the line
        has an audit cell and the header lacks it."""
        header = _header(self.path)
        if not values["audit"] or "audit" in header:
            self._append(handle, _line(header, values))
            return
        with self._with_audit_column() as replaced:
            self._append(replaced, _line([*header, "audit"], values))

    @contextmanager
    def _with_audit_column(self) -> Iterator:
        """The ledger with ``,audit`` added to its header line, swapped in for the old file (whose
        lock the caller holds), opened and locked before the swap, so no one appends to it first."""
        data = self.path.read_bytes()
        end = data.find(b"\n") + 1 or len(data)
        names = data[:end].rstrip(b"\r\n")
        header = names + b",audit" + (data[len(names) : end] or b"\n")  # the header's own line end
        with ExitStack() as stack:
            with atomic_path(self.path) as temp:
                handle = stack.enter_context(open(temp, "ab", buffering=0))
                fcntl.flock(handle, fcntl.LOCK_EX)
                handle.write(header + data[end:])  # the lines under the header, byte for byte
                os.fsync(handle.fileno())
            yield handle

    def _append(self, handle, text: str) -> None:
        data = text.encode("utf-8")
        size = os.fstat(handle.fileno()).st_size
        if size and not _ends_with_newline(self.path, size):
            data = b"\n" + data  # a hand-edited last line without its newline stays its own line
        handle.write(data)  # one write of whole lines: a kill leaves them whole or absent
        os.fsync(handle.fileno())
        status = os.fstat(handle.fileno())
        before = self._seen.lines if size else 0
        self._seen = _Seen(status.st_size, status.st_ino, before + data.count(b"\n"))

    @staticmethod
    def _record(line: int, row) -> dict:
        return {
            "line": int(line),
            **{key: str(row[key]) for key in ("decision", "label", "reviewer", "note", "audit")},
        }


def _still_at(handle, path: Path) -> bool:
    """Whether ``handle`` is open on the file ``path`` names (not one since replaced or removed)."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _header(path: Path) -> list[str]:
    """The ledger's column names, as :func:`curate.data.csvfile.read_table` reads them."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return [name.strip() for name in next(csv.reader(handle), [])]


def _line(header: list[str], values: dict) -> str:
    return csv_text(None, [[values.get(name, "") for name in header]])


def _ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as handle:
        handle.seek(size - 1)
        return handle.read(1) == b"\n"

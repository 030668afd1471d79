"""The one strict CSV reader and the spreadsheet-safe writer for the files people edit.

Read (:func:`read_table`): every cell a string, the header line's names NFC and stripped,
rows indexed by their line number as an editor counts them (line 1 is the header, blank
lines counted and dropped), and any fault (missing, a folder, not UTF-8, ragged rows, empty)
one line naming the file. metadata.csv and the review ledger both go through it.

Write (:func:`csv_text`): a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return becomes a formula when a spreadsheet opens the file (OWASP "CSV
injection"); it is written with a leading ``'`` instead, which spreadsheets show as text.
:func:`restore` takes that quote off again on read, so the value round-trips.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from curate.errors import CurateError

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def read_table(source: Path | BinaryIO, expected: str, name: str | None = None) -> pd.DataFrame:
    """``source`` (a file, or bytes from a git revision) as strings under its header, indexed
    by editor line number; blank lines dropped; a UTF-8 byte-order mark (spreadsheets write
    one) ignored.

    ``expected`` says what the header should be, for the message on an empty file. Short rows
    are padded with empty strings. Raises :class:`CurateError` naming ``name`` (default:
    ``source``) on any fault.
    """
    path = source if name is None else name
    try:
        table = pd.read_csv(
            source, dtype=str, keep_default_na=False, header=None, skip_blank_lines=False,
            encoding="utf-8-sig",
        )  # fmt: skip
    except pd.errors.EmptyDataError:
        raise CurateError(f"{path}: empty file (expected {expected})") from None
    except OSError as exc:  # a folder of that name, no permission
        raise CurateError(f"{path}: not readable ({exc.strerror})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CurateError(f"{path}: not a readable CSV ({reason})") from None
    table = table.fillna("")  # short rows and blank lines are padded with NaN
    header = [unicodedata.normalize("NFC", str(name)).strip() for name in table.iloc[0]]
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise CurateError(f"{path}: column {twice[0]!r} appears twice")
    table = table.iloc[1:].set_axis(header, axis=1)
    table.index = table.index + 1
    return table[(table != "").any(axis=1)]


def neutralise(cell: str) -> str:
    """``cell`` as a spreadsheet shows it as text: a leading ``'`` before a formula start."""
    return QUOTE + cell if cell.startswith(FORMULA_STARTS) else cell


def restore(cell: str) -> str:
    """The value :func:`neutralise` wrote: its leading ``'`` taken off, other cells as they are."""
    return cell[1:] if cell.startswith(QUOTE) and cell[1:].startswith(FORMULA_STARTS) else cell


def csv_text(header: Sequence[str] | None, rows: Iterable[Sequence[object]]) -> str:
    """CSV lines (``\\n`` ends), every cell neutralised; ``header`` first unless None."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows([neutralise(str(cell)) for cell in row] for row in rows)
    return buffer.getvalue()

"""The review ledger: people's label decisions, which the clean stage applies over cleanlab's.

``clean.decisions`` (``data/review/decisions.csv``) holds one decision per line, with the
columns :data:`COLUMNS`: ``sample_id`` or ``path`` names the sample (``sample_id`` wins when
both are given: it names the content, so a renamed file keeps its decision and a file
replaced by other pictures loses it); ``decision`` is ``keep`` | ``drop`` | ``relabel``, or
``undo``, which takes back the decision standing on that sample (tools only ever append:
a changed mind is an undo line and a new decision, and the history stays); ``label`` is the
class to relabel to (relabel only); ``reviewer`` and ``note`` are for people; ``audit``, a
column ledgers from before audits lack (read as empty), holds the band of a decision made in an
audit (``2 of 4``: :mod:`curate.curation.audit`), empty for one made in queue order. A second
decision on a sample whose first still stands is refused (two reviewers never silently
overwrite each other). No file: no decisions.

It is checked like the params: a fault stops the stage with one line naming the file and the
line (as an editor numbers it). A decision whose sample is not in the current data (its
source file was removed) is an orphan: reported, not applied, not an error. Test samples are
refused: clean never changes the test split. Pure pandas: no torch, no I/O but the read.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from curate.data.csvfile import read_table, restore
from curate.errors import CurateError

COLUMNS = ("sample_id", "path", "decision", "label", "reviewer", "note", "audit")
OPTIONAL = ("audit",)  # added after ledgers were in use: a header without it is still a ledger
DECISIONS = ("keep", "drop", "relabel")
UNDO = "undo"  # takes back the decision standing on its sample: the ledger is only appended to
VERBS = (*DECISIONS, UNDO)
ORPHAN_COLUMNS = ("line", "sample_id", "path", "decision", "label", "reviewer")


@dataclass
class Review:
    decisions: pd.DataFrame  # index: the samples' index (train rows); line, decision, label (-1: none), audit
    orphans: pd.DataFrame  # :data:`ORPHAN_COLUMNS`, the ledger's strings, in file order


def read_ledger(path: Path) -> pd.DataFrame:
    """The ledger as stripped strings, indexed by line number (line 1 is the header); empty if absent.

    A cell the writer neutralised against spreadsheet formulas (``'=...``) reads as written
    before (:func:`curate.data.csvfile.restore`).
    """
    if not path.exists():
        return no_decisions()
    return parse_ledger(path, str(path))


def parse_ledger(source: Path | BinaryIO, name: str) -> pd.DataFrame:
    """:func:`read_ledger` of a file or of bytes (a git revision's), ``name`` naming it in messages."""
    table = read_table(source, f"the header line {','.join(COLUMNS)}", name)
    _check_header(list(table.columns), name)
    table = table.reindex(columns=list(COLUMNS), fill_value="").map(lambda cell: restore(cell).strip())
    return table[(table != "").any(axis=1)]


def no_decisions() -> pd.DataFrame:
    """A ledger without a line: what a missing file means."""
    return pd.DataFrame(columns=list(COLUMNS), dtype=str)


def _check_header(header: list[str], path: str) -> None:
    for name in header:
        if name not in COLUMNS:
            raise CurateError(f"{path}: unknown column {name!r}{_hint(name, COLUMNS, 'columns')}")
    missing = [name for name in COLUMNS if name not in header and name not in OPTIONAL]
    if missing:
        raise CurateError(
            f"{path}: missing column(s) {', '.join(missing)} (the header line is {','.join(COLUMNS)})"
        )


def sample_key(entry: pd.Series | dict) -> str:
    """What names a line's sample without the data at hand: its sample_id, else its NFC path."""
    return entry["sample_id"] or _nfc(entry["path"])


def standing(ledger: pd.DataFrame, names: list[str], source: str) -> pd.DataFrame:
    """The lines that stand, one per sample (keyed by :func:`sample_key`), in file order.

    An ``undo`` line takes back the decision standing on its sample; each line is checked as
    :func:`resolve` checks it (without the data, so test samples and orphans are not told).
    """
    kept = _fold(ledger, names, source, sample_key)
    return ledger.loc[[line for line, _ in kept.values()]]


def _fold(ledger: pd.DataFrame, names: list[str], source: str, key_of) -> dict:
    """key -> (line, class index) of the decisions that stand after the undo lines, file order.

    ``key_of(entry)`` names a line's sample. Raises on the first bad line, a second
    decision on a sample whose first still stands, or an undo with nothing to take back.
    """
    kept: dict = {}
    for line, entry in ledger.iterrows():
        where = f"{source} line {line}"
        label = check_entry(entry, names, where)
        if not (entry["sample_id"] or entry["path"]):
            raise CurateError(f"{where}: neither sample_id nor path given (one of them names the sample)")
        key = key_of(entry)
        if entry["decision"] == UNDO:
            if kept.pop(key, None) is None:
                raise CurateError(f"{where}: undo of {_named(entry)}, which has no decision standing")
        elif key in kept:
            raise CurateError(
                f"{where}: {_named(entry)} already decided on line {kept[key][0]} "
                "(one decision per sample: append an undo line to change it)"
            )
        else:
            kept[key] = (line, label)
    return kept


def resolve(ledger: pd.DataFrame, samples: pd.DataFrame, names: list[str], source: str) -> Review:
    """Check each decision of ``ledger`` and match the standing ones to rows of ``samples``.

    ``source`` names the ledger in messages. Raises :class:`CurateError` on the first bad
    line: unknown decision, a label that is not one of ``names``, a relabel without a label
    or a label on keep/drop/undo, a sample decided twice (without an undo between), an undo
    of nothing, a test sample.
    """
    by_id = pd.Series(samples.index, index=samples["sample_id"])
    by_path = pd.Series(samples.index, index=samples["path"].map(_nfc))

    def key_of(entry: pd.Series):
        index = by_id.get(entry["sample_id"]) if entry["sample_id"] else by_path.get(_nfc(entry["path"]))
        return sample_key(entry) if index is None else index

    decided, orphans = [], []
    for key, (line, label) in _fold(ledger, names, source, key_of).items():
        entry = ledger.loc[line]
        if isinstance(key, str):
            orphans.append([line, *(entry[column] for column in ORPHAN_COLUMNS[1:])])
        elif samples.at[key, "split"] != "train":
            raise CurateError(
                f"{source} line {line}: {_named(entry)} is a test sample; clean never changes the test "
                "split (reviewing test labels is out of scope for clean): remove the line"
            )
        else:
            decided.append((key, line, entry["decision"], label, entry["audit"]))
    columns = ["index", "line", "decision", "label", "audit"]
    decisions = pd.DataFrame(decided, columns=columns).set_index("index")
    return Review(decisions, pd.DataFrame(orphans, columns=list(ORPHAN_COLUMNS)))


def band_label(band: int, bands: int) -> str:
    """What the ledger's ``audit`` column holds for a decision made in ``band`` (1-based)."""
    return f"{band} of {bands}"


def parse_band(text: str) -> tuple[int, int] | None:
    """``(band, bands)`` of an ``audit`` cell, None when it names none (not an audit line)."""
    parts = str(text).split(" of ")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        return None
    band, bands = (int(part) for part in parts)
    return (band, bands) if 1 <= band <= bands else None


def check_entry(entry: pd.Series | dict, names: list[str], where: str) -> int:
    """The class index a relabel asks for; -1 for keep, drop and undo. ``where`` starts the
    message of the :class:`CurateError` a bad decision or label raises."""
    decision, label = entry["decision"], entry["label"]
    if entry.get("audit") and parse_band(entry["audit"]) is None:
        raise CurateError(
            f"{where}: audit {entry['audit']!r} names no band (an audit decision's is like '2 of 4'; "
            "empty for a decision made in queue order)"
        )
    if decision not in VERBS:
        raise CurateError(
            f"{where}: decision {decision!r} is not one of {', '.join(VERBS)}{_hint(decision, VERBS)}"
        )
    if decision != "relabel":
        if label:
            raise CurateError(
                f"{where}: label {label!r} given with decision {decision} (only relabel takes one)"
            )
        return -1
    if not label:
        raise CurateError(
            f"{where}: decision relabel without a label (one of the classes: {', '.join(names)})"
        )
    if label not in names:
        raise CurateError(f"{where}: label {label!r} is not a class{_hint(label, names, 'classes')}")
    return names.index(label)


def apply(train: pd.DataFrame, review: Review, names: list[str]) -> pd.DataFrame:
    """The train rows with people's decisions over the automatic actions.

    Adds ``auto_action`` (what cleanlab and the cap decided) and ``action_source``
    (``auto`` | ``review``); a decided row's ``label`` is its given label, or the class a
    relabel chose; ``label_name`` follows ``label``.
    """
    train = train.assign(auto_action=train["action"], action_source="auto")
    decided = review.decisions
    train.loc[decided.index, "action"] = decided["decision"]
    train.loc[decided.index, "action_source"] = "review"
    # A person's keep or drop undoes an automatic relabel; their relabel sets its own class.
    labels = decided["label"].where(decided["decision"] == "relabel", train.loc[decided.index, "given_label"])
    train.loc[decided.index, "label"] = labels.astype(train["label"].dtype)
    train["label_name"] = [names[label] for label in train["label"]]
    return train


def figures(train: pd.DataFrame) -> dict[str, float | int]:
    """What people decided, measured against cleanlab's flags, from the cleaned train rows.

    A reviewed row is *confirmed* when the person agrees with the flag: a flagged row they
    dropped or relabelled to another class, an unflagged row they kept (or relabelled to its
    own class); else *overturned*. ``review_precision``: the flags' precision as judged by
    people, confirmed flags / reviewed flags (NaN when no flag was reviewed).
    """
    reviewed = (train["action_source"] == "review").to_numpy()
    flagged = train["is_label_issue"].to_numpy(dtype=bool)
    action = train["action"].to_numpy()
    label_wrong = (action == "drop") | (
        (action == "relabel") & (train["label"] != train["given_label"]).to_numpy()
    )
    agrees = reviewed & (label_wrong == flagged)
    reviewed_flags = int((reviewed & flagged).sum())
    return {
        "reviewed": int(reviewed.sum()),
        "reviewed_flags": reviewed_flags,
        "confirmed": int(agrees.sum()),
        "overturned": int((reviewed & ~agrees).sum()),
        "relabels_by_people": int((reviewed & (action == "relabel")).sum()),
        "review_precision": float((agrees & flagged).sum() / reviewed_flags)
        if reviewed_flags
        else float("nan"),
    }


def _named(entry: pd.Series) -> str:
    return f"sample {entry['sample_id']}" if entry["sample_id"] else f"path {entry['path']!r}"


def _hint(value: str, known: tuple[str, ...] | list[str], kind: str = "") -> str:
    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" ({kind}: {', '.join(known)})" if kind else ""


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", str(text))

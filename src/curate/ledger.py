"""The review ledger: people's label decisions, which the clean stage applies over cleanlab's.

``clean.decisions`` (``data/review/decisions.csv``) holds one decision per line, with the
columns :data:`COLUMNS`: ``sample_id`` or ``path`` names the sample (``sample_id`` wins when
both are given: it names the content, so a renamed file keeps its decision and a file
replaced by other pictures loses it); ``decision`` is ``keep`` | ``drop`` | ``relabel``;
``label`` is the class to relabel to (relabel only); ``reviewer`` and ``note`` are for people.
No file: no decisions.

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

import pandas as pd

from curate.errors import CurateError

COLUMNS = ("sample_id", "path", "decision", "label", "reviewer", "note")
DECISIONS = ("keep", "drop", "relabel")
ORPHAN_COLUMNS = ("line", "sample_id", "path", "decision", "label", "reviewer")


@dataclass
class Review:
    decisions: pd.DataFrame  # index: the samples' index (train rows); line, decision, label (-1: none)
    orphans: pd.DataFrame  # :data:`ORPHAN_COLUMNS`, the ledger's strings, in file order


def read_ledger(path: Path) -> pd.DataFrame:
    """The ledger as stripped strings, indexed by line number (line 1 is the header); empty if absent."""
    if not path.exists():
        return no_decisions()
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, header=None, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise CurateError(f"{path}: empty file (expected the header line {','.join(COLUMNS)})") from None
    except OSError as exc:  # a folder of that name, no permission
        raise CurateError(f"{path}: not readable ({exc.strerror})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CurateError(f"{path}: not a readable CSV ({reason})") from None
    table = table.fillna("").map(lambda cell: cell.strip())  # short rows are padded with NaN
    header = [_nfc(name) for name in table.iloc[0]]
    _check_header(header, path)
    table = table.iloc[1:].set_axis(header, axis=1)[list(COLUMNS)]
    table.index = table.index + 1
    return table[(table != "").any(axis=1)]  # blank lines


def no_decisions() -> pd.DataFrame:
    """A ledger without a line: what a missing file means."""
    return pd.DataFrame(columns=list(COLUMNS), dtype=str)


def _check_header(header: list[str], path: Path) -> None:
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise CurateError(f"{path}: column {twice[0]!r} appears twice")
    for name in header:
        if name not in COLUMNS:
            raise CurateError(f"{path}: unknown column {name!r}{_hint(name, COLUMNS, 'columns')}")
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise CurateError(
            f"{path}: missing column(s) {', '.join(missing)} (the header line is {','.join(COLUMNS)})"
        )


def resolve(ledger: pd.DataFrame, samples: pd.DataFrame, names: list[str], source: str) -> Review:
    """Check each decision of ``ledger`` and match it to a row of ``samples``.

    ``source`` names the ledger in messages. Raises :class:`CurateError` on the first bad
    line: unknown decision, a label that is not one of ``names``, a relabel without a label
    or a label on keep/drop, a sample decided twice, a test sample.
    """
    by_id = pd.Series(samples.index, index=samples["sample_id"])
    by_path = pd.Series(samples.index, index=samples["path"].map(_nfc))
    decided, orphans, seen = [], [], {}
    for line, entry in ledger.iterrows():
        where = f"{source} line {line}"
        label = _checked_label(entry, names, where)
        if entry["sample_id"]:
            index, key = by_id.get(entry["sample_id"]), entry["sample_id"]
        elif entry["path"]:
            index, key = by_path.get(_nfc(entry["path"])), _nfc(entry["path"])
        else:
            raise CurateError(f"{where}: neither sample_id nor path given (one of them names the sample)")
        key = key if index is None else index
        if key in seen:
            raise CurateError(
                f"{where}: {_named(entry)} already decided on line {seen[key]} (one line per sample)"
            )
        seen[key] = line
        if index is None:
            orphans.append([line, *(entry[column] for column in ORPHAN_COLUMNS[1:])])
        elif samples.at[index, "split"] != "train":
            raise CurateError(
                f"{where}: {_named(entry)} is a test sample; clean never changes the test split "
                "(reviewing test labels is out of scope for clean): remove the line"
            )
        else:
            decided.append((index, line, entry["decision"], label))
    decisions = pd.DataFrame(decided, columns=["index", "line", "decision", "label"]).set_index("index")
    return Review(decisions, pd.DataFrame(orphans, columns=list(ORPHAN_COLUMNS)))


def _checked_label(entry: pd.Series, names: list[str], where: str) -> int:
    """The class index a relabel asks for; -1 for keep and drop."""
    decision, label = entry["decision"], entry["label"]
    if decision not in DECISIONS:
        raise CurateError(
            f"{where}: decision {decision!r} is not one of {', '.join(DECISIONS)}{_hint(decision, DECISIONS)}"
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

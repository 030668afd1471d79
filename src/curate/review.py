"""``curate review [--limit N] [--class NAME] [--group NAME] [--html FILE]``: the review sheet.

cleanlab finds candidates; people decide. This lists the train samples clean flagged as
label issues that the review ledger (``clean.decisions``, ``data/review/decisions.csv``)
has no decision for yet, most suspicious first (lowest label quality), each with its
thumbnail, given and predicted label, label quality and its ``curate trace`` command.
It writes the page (``--html``, default ``reports/review.html``, a working file that git
ignores) and ``data/review/todo.csv``: the ledger's columns, pre-filled with the automatic
action as the suggested decision, so a reviewer edits a spreadsheet and appends its rows
to the ledger. Markdown goes to stdout. ``--class`` and ``--group`` split the work.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from curate import ledger as review_ledger
from curate.dataset import CLEAN_DIR, IMAGE_STORES, read_samples, write_text
from curate.errors import CurateError
from curate.params import load_params
from curate.report import Verdict, thumbnail
from curate.report.render import render, render_markdown
from curate.stage import guarded
from curate.store import Store

TODO = Path("data/review/todo.csv")
HTML = Path("reports/review.html")
CLEAN_TABLE = CLEAN_DIR / "samples.parquet"
NEEDED = ("given_label", "label_quality", "is_label_issue", "predicted_label", "action")
# Clean's automatic action as the reviewer's starting point ("none" on a flagged row: kept).
SUGGESTED = {"drop": "drop", "relabel": "relabel", "keep": "keep", "none": "keep"}
DEFAULT_LIMIT = 100
CHOICES_NAMED = 10  # an unknown --class/--group with no close match lists this many choices


@dataclass(frozen=True)
class Candidate:
    """One flagged sample without a decision: a row of the sheet and of todo.csv."""

    sample_id: str
    path: str
    row: int  # into data/raw/images
    group: str
    given: str
    predicted: str
    quality: float
    decision: str  # suggested: the automatic action
    label: str  # the class to relabel to; empty unless decision is relabel

    @property
    def trace(self) -> str:
        return f"curate trace {self.sample_id}"

    @property
    def shown_quality(self) -> str:
        return f"{self.quality:.3g}"  # the most suspicious are far below 0.001

    @property
    def suggestion(self) -> str:
        return f"relabel to {self.label}" if self.label else self.decision


@dataclass
class Sheet:
    candidates: list[Candidate]  # the first ``limit`` undecided, most suspicious first
    flagged: int  # flagged train samples (filters applied)
    decided: int  # of them, already in the ledger
    filters: str  # how the work was split, for the page

    @property
    def undecided(self) -> int:
        return self.flagged - self.decided

    @property
    def rows(self) -> list[list]:
        """The sheet as table rows, for the Markdown digest."""
        return [
            [index, item.path, item.given, item.predicted, item.shown_quality, item.suggestion, item.trace]
            for index, item in enumerate(self.candidates, start=1)
        ]


def _nfc(path: str) -> str:
    return unicodedata.normalize("NFC", path)  # macOS writes file names decomposed


def load_clean(path: Path = CLEAN_TABLE) -> pd.DataFrame:
    """Clean's table; one line naming the file or column when it is missing or stale."""
    if not path.exists():
        raise CurateError(f"{path}: not found (run the pipeline first: dvc repro)")
    clean = read_samples(path)
    missing = [column for column in NEEDED if column not in clean.columns]
    if missing:
        raise CurateError(f"{path}: missing column {missing[0]} (stale: dvc repro)")
    return clean


def _check_choice(option: str, value: str | None, choices: list[str]) -> None:
    if value is None or value in choices:
        return
    close = difflib.get_close_matches(value, choices, n=1)
    hint = (
        f"did you mean {close[0]}?"
        if close
        else "one of "
        + ", ".join(choices[:CHOICES_NAMED])
        + (", ..." if len(choices) > CHOICES_NAMED else "")
    )
    raise CurateError(f"{option} {value}: no such {option[2:]} in {CLEAN_TABLE}; {hint}")


def build_sheet(
    clean: pd.DataFrame,
    ledger: pd.DataFrame,
    limit: int = DEFAULT_LIMIT,
    class_name: str | None = None,
    group: str | None = None,
) -> Sheet:
    """The flagged train rows of ``clean`` the ledger (``curate.ledger.read_ledger``) does not
    decide, filtered by given class and group, lowest label quality first (ties by sample_id);
    pure. A ledger line names its sample as clean reads it: by sample_id when given, else by
    NFC path."""
    names = dict(zip(clean["label"].astype(int), clean["label_name"].astype(str), strict=True))
    given = clean["given_label"].astype(int).map(lambda label: names.get(label, str(label)))
    _check_choice("--class", class_name, sorted(set(given)))
    _check_choice("--group", group, sorted(set(clean["group"].astype(str))))
    chosen = (clean["split"] == "train") & clean["is_label_issue"].astype(bool)
    if class_name is not None:
        chosen &= given == class_name
    if group is not None:
        chosen &= clean["group"].astype(str) == group
    flagged = clean[chosen.to_numpy()].assign(given_name=given[chosen.to_numpy()])
    by_id = ledger["sample_id"] != ""
    ids, paths = set(ledger.loc[by_id, "sample_id"]), set(ledger.loc[~by_id, "path"].map(_nfc))
    decided = flagged["sample_id"].isin(ids) | flagged["path"].astype(str).map(_nfc).isin(paths)
    todo = flagged[~decided.to_numpy()].sort_values(["label_quality", "sample_id"], kind="stable")
    split = [f"{option} {value}" for option, value in (("class", class_name), ("group", group)) if value]
    return Sheet(
        candidates=[_candidate(row, names) for _, row in todo.head(limit).iterrows()],
        flagged=len(flagged),
        decided=int(decided.sum()),
        filters=", ".join(split) or "none",
    )


def _candidate(row: pd.Series, names: dict[int, str]) -> Candidate:
    predicted = names.get(int(row["predicted_label"]), str(int(row["predicted_label"])))
    decision = SUGGESTED.get(str(row["action"]), "keep")
    return Candidate(
        sample_id=str(row["sample_id"]),
        path=str(row["path"]),
        row=int(row["row"]),
        group=str(row["group"]),
        given=str(row["given_name"]),
        predicted=predicted,
        quality=float(row["label_quality"]),
        decision=decision,
        label=predicted if decision == "relabel" else "",
    )


def todo_csv(sheet: Sheet) -> str:
    """The ledger's columns, one row per candidate; reviewer and note left for the reviewer."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(review_ledger.COLUMNS)
    for item in sheet.candidates:
        writer.writerow([item.sample_id, item.path, item.decision, item.label, "", ""])
    return buffer.getvalue()


def thumbnails(candidates: list[Candidate], store: Path = IMAGE_STORES["raw"]) -> dict[str, str]:
    """sample_id -> PNG data URI; empty when the image store is missing (the page says so)."""
    if not store.exists():
        return {}
    images = Store(store, "ingest")
    return {item.sample_id: thumbnail(images[item.row]) for item in candidates if 0 <= item.row < len(images)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate review", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT, help="samples on the sheet (100)")
    parser.add_argument("--class", dest="class_name", metavar="NAME", help="only samples given this class")
    parser.add_argument("--group", metavar="NAME", help="only samples of this group")
    parser.add_argument("--html", metavar="FILE", default=str(HTML), help=f"the page (default {HTML})")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source = Path(load_params().clean.decisions)
    ledger = review_ledger.read_ledger(source)
    sheet = build_sheet(load_clean(), ledger, args.limit, args.class_name, args.group)
    waiting = [f"{sheet.undecided} flagged samples wait for a decision"] if sheet.undecided else []
    context = {
        "sheet": sheet,
        "ledger": str(source),
        "todo": str(TODO),
        "html": args.html,
        "verdict": Verdict(warnings=waiting),
    }
    write_text(TODO, todo_csv(sheet))
    write_text(
        args.html, render("review.html", stage="review", thumbs=thumbnails(sheet.candidates), **context)
    )
    sys.stdout.write(render_markdown("review.md", stage="review", **context))
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))

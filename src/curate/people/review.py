"""``curate review [--limit N] [--class NAME] [--group NAME] [--html FILE]``: the review sheet;
``curate review --serve [--port N] [--host H] [--reviewer NAME] [--open] [--audit N]``: the review
app (:mod:`curate.people.review_app.server`); ``--audit N`` asks about a random sample of N label
flags by label-quality band instead of the queue (:mod:`curate.curation.audit`).

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
import difflib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from curate.data import ledger as review_ledger
from curate.data.atomic import write_text
from curate.data.csvfile import csv_text
from curate.data.image_rows import read_images
from curate.data.paths import IMAGE_STORES
from curate.errors import CurateError
from curate.params import load_params
from curate.people.flags import CLEAN_TABLE, class_names, decided_mask, flag_table, load_clean
from curate.report import Verdict, thumbnail
from curate.report.render import render, render_markdown
from curate.stage import guarded

TODO = Path("data/review/todo.csv")
HTML = Path("reports/review.html")
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
    """The label issues of ``clean`` (:func:`curate.people.flags.flag_table`) without a standing decision
    in the ledger (``curate.data.ledger.standing``), filtered by given class and group, most
    suspicious first; pure. A ledger line names its sample as clean reads it: by sample_id
    when given, else by NFC path."""
    flags = flag_table(clean)
    flags = flags[flags["is_label"].to_numpy()]
    _check_choice("--class", class_name, sorted(set(class_names(clean).values())))
    _check_choice("--group", group, sorted(set(clean["group"].astype(str))))
    chosen = np.ones(len(flags), dtype=bool)
    if class_name is not None:
        chosen &= (flags["given_name"] == class_name).to_numpy()
    if group is not None:
        chosen &= (flags["group"].astype(str) == group).to_numpy()
    flagged = flags[chosen]
    decided = decided_mask(flagged, ledger)
    todo = flagged[~decided]
    split = [f"{option} {value}" for option, value in (("class", class_name), ("group", group)) if value]
    return Sheet(
        candidates=[_candidate(row) for _, row in todo.head(limit).iterrows()],
        flagged=len(flagged),
        decided=int(decided.sum()),
        filters=", ".join(split) or "none",
    )


def _candidate(row: pd.Series) -> Candidate:
    predicted = str(row["suggested_name"])
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
    """The ledger's columns but the optional audit (these are not audit decisions, and their rows
    paste into a ledger from before audits too), one row per candidate; reviewer and note left for
    the reviewer. Cells a spreadsheet would run as formulas are neutralised
    (:func:`curate.data.csvfile.csv_text`)."""
    columns = [name for name in review_ledger.COLUMNS if name not in review_ledger.OPTIONAL]
    rows = ([item.sample_id, item.path, item.decision, item.label, "", ""] for item in sheet.candidates)
    return csv_text(columns, rows)


def thumbnails(candidates: list[Candidate], store: Path = IMAGE_STORES["raw"]) -> dict[str, str]:
    """sample_id -> PNG data URI; empty when the image store is missing (the page says so)."""
    if not store.exists():
        return {}
    images = read_images(store)
    return {item.sample_id: thumbnail(images[item.row]) for item in candidates if 0 <= item.row < len(images)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate review", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT, help="samples on the sheet (100)")
    parser.add_argument("--class", dest="class_name", metavar="NAME", help="only samples given this class")
    parser.add_argument("--group", metavar="NAME", help="only samples of this group")
    parser.add_argument("--html", metavar="FILE", default=str(HTML), help=f"the page (default {HTML})")
    app = parser.add_argument_group("the review app (--serve)")
    app.add_argument("--serve", action="store_true", help="serve the keyboard review app, not the sheet")
    app.add_argument("--port", type=int, default=8642, help="port to listen on (8642; 0: any free one)")
    app.add_argument("--host", default="127.0.0.1", help="address (127.0.0.1: this machine only)")
    app.add_argument("--reviewer", metavar="NAME", default="", help="who signs the decisions (git user.name)")
    app.add_argument("--open", action="store_true", help="open the URL in a browser")
    app.add_argument(
        "--audit", metavar="N", type=_positive, help="audit a random sample of N label flags, by band"
    )
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.audit and not args.serve:
        parser.error("--audit N is an audit in the review app: add --serve")
    params = load_params()
    source = Path(params.clean.decisions)
    if args.serve:
        from curate.people.review_app.audit_mode import Plan  # the web stack only when asked for
        from curate.people.review_app.server import Settings, serve

        plan = Plan(args.audit, params.seed, params.clean.audit_bands) if args.audit else None
        return serve(Settings(source, args.host, args.port, args.reviewer, args.open, plan))
    clean = load_clean()
    names = [name for _, name in sorted(class_names(clean).items())]
    ledger = review_ledger.standing(review_ledger.read_ledger(source), names, str(source))
    sheet = build_sheet(clean, ledger, args.limit, args.class_name, args.group)
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

"""``curate trace PATH_OR_SAMPLE_ID [--rev REV] [--html FILE]``: what happened to one sample.

DVC versions files, cleanlab scores rows, fairlearn weighs groups: none of them answers
"why was this image dropped?". This reads the stage tables and follows one sample
through them: ingest (source path, label, group, split), clean (label quality, predicted
label, out-of-fold probability of the given label, the action and why), rebalance
(weight, copies), augment (its new images and their recipe) and evaluate (for a test
sample: the prediction, right or wrong). A stage that does not list the sample gets one
line saying why. Markdown goes to stdout; ``--html FILE`` also writes a page with the
sample's thumbnail and its augmented copies'. ``--rev`` reads the tables as they were
at a git revision or experiment (through DVC, like ``curate compare``).

This module is the command: it finds the sample and writes the page. What it reads of a revision
is :mod:`curate.people.trace_tables`; how each stage's section reads, :mod:`curate.people.trace_sections`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from curate.data.atomic import write_text
from curate.data.paths import IMAGE_STORES, producer_of
from curate.data.store import RevisionRows, Store
from curate.errors import CurateError
from curate.people.compare import Revision
from curate.people.trace_sections import Trace, trace
from curate.people.trace_tables import TABLES, Tables, load_tables
from curate.report import Verdict, thumbnail
from curate.report.render import render, render_markdown
from curate.stage import guarded

CHILDREN_SHOWN = 8  # augmented copies shown as thumbnails on the --html page
CLOSE_MATCH = 0.6  # difflib ratio above which a path is offered as "did you mean"
CLOSE_CANDIDATES = 50  # of which the closest is named


def find_sample(tables: Tables, query: str) -> tuple[pd.Series, str]:
    """The raw row a path or sample id names, and a note when it was found indirectly.

    A path matches the ``path`` column exactly after NFC normalisation (macOS writes file
    names decomposed); a leading ``ingest.source`` folder is allowed. An id matches exactly:
    ``abc`` never matches its identical twin ``abc-1``. An augmented copy's id resolves
    to its parent.
    """
    raw = tables.frames["ingest"]
    by_id = raw[raw["sample_id"] == query]
    if len(by_id):
        return by_id.iloc[0], ""
    wanted = unicodedata.normalize("NFC", query)
    source = str(tables.params.get("ingest.source", "")).rstrip("/")
    if source and wanted.startswith(source + "/"):
        wanted = wanted[len(source) + 1 :]
    paths = raw["path"].astype(str).map(lambda path: unicodedata.normalize("NFC", path))
    by_path = raw[(paths == wanted).to_numpy()]
    if len(by_path):
        return by_path.iloc[0], ""
    augmented = tables.frames["augment"]
    if augmented is not None:
        copy = augmented[augmented["sample_id"] == query]
        parent = raw[raw["sample_id"] == (copy["parent_id"].iloc[0] if len(copy) else None)]
        if len(parent):
            return parent.iloc[0], f"{query} is an augmented copy; this is its original."
    close = _did_you_mean(wanted, paths.tolist())
    hint = f"; did you mean {close}?" if close else ""
    raise CurateError(
        f"{query}: no sample has this path or sample_id in {TABLES['ingest']} ({tables.rev}){hint}"
    )


def _did_you_mean(wanted: str, paths: list[str]) -> str | None:
    """The closest path by difflib's ratio; a tie (``a/00010``, ``a/04010``) goes to the longer prefix."""
    candidates = difflib.get_close_matches(wanted, paths, n=CLOSE_CANDIDATES, cutoff=CLOSE_MATCH)

    def closeness(path: str) -> tuple[float, int]:
        ratio = difflib.SequenceMatcher(None, wanted, path).ratio()
        return round(ratio, 9), len(os.path.commonprefix([wanted, path]))

    return max(candidates, key=closeness) if candidates else None


def thumbnails(rev: Revision, workspace: bool, result: Trace) -> dict[str, list[dict]]:
    """The sample's image and its copies' images as thumbnails (none where a store is missing)."""
    raw = _store(rev, workspace, IMAGE_STORES["raw"])
    caption = f"{result.sample['label_name']} / {result.sample['group']}"
    shown = {"sample": [_thumb(raw, result.sample["row"], caption, result.path)], "children": []}
    if len(result.children):
        new = _store(rev, workspace, IMAGE_STORES["augmented"])
        shown["children"] = [
            _thumb(new, child["row"], f"copy {index}", child["sample_id"])
            for index, (_, child) in enumerate(result.children.head(CHILDREN_SHOWN).iterrows(), start=1)
        ]
    return {kind: [thumb for thumb in thumbs if thumb] for kind, thumbs in shown.items()}


def _thumb(images: Store | RevisionRows | None, row: int, caption: str, title: str) -> dict | None:
    if images is None or not 0 <= int(row) < len(images):  # no store, or one older than the table
        return None
    return {"uri": thumbnail(images[int(row)]), "caption": caption, "title": title}


def _store(rev: Revision, workspace: bool, path: Path) -> Store | RevisionRows | None:
    """A pixel store: memory-mapped in the workspace (one row is read), else read through DVC."""
    if not workspace:
        return RevisionRows.open(rev.read, path)
    return Store(path, producer_of(path)) if path.exists() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate trace", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sample", metavar="PATH_OR_SAMPLE_ID", help="a source path (as in the path column) or a sample_id"
    )
    parser.add_argument(
        "--rev", default=None, help="a git revision or experiment name (default: the workspace)"
    )
    parser.add_argument("--html", metavar="FILE", help="also write an HTML page with the sample's thumbnails")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rev = Revision(args.rev)
    tables = load_tables(rev)
    sample, note = find_sample(tables, args.sample)
    result = trace(tables, sample, note)
    context = {"trace": result, "verdict": Verdict(warnings=[result.summary] if result.notable else [])}
    if args.html:
        context["thumbs"] = thumbnails(rev, args.rev is None, result)
        write_text(args.html, render("trace.html", stage="trace", **context))
    sys.stdout.write(render_markdown("trace.md", stage="trace", **context))
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))

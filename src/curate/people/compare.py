"""``curate compare [REV_A] [REV_B]``: what changed between two versions of the data set.

``dvc diff`` stops at file hashes; this reads both versions' sample tables and matches
them on ``sample_id``: samples added, removed, relabelled and reweighted, per class and
per group, next to the review decisions added to the ledger, the params changed, the
figures with deltas (headline metrics and details alike) and the gate verdicts.
A revision is any git revision or experiment name (read through DVC, so data comes
from the DVC cache); without one, ``HEAD`` is compared with the workspace. Markdown goes
to stdout (a pull-request comment); ``--html FILE`` also writes an HTML page with
thumbnails of the samples that changed.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from curate import dag
from curate.data.atomic import write_text
from curate.data.ledger import COLUMNS as LEDGER_COLUMNS
from curate.data.ledger import parse_ledger
from curate.data.paths import BALANCED_DIR, IMAGE_STORES
from curate.data.store import RevisionRows
from curate.errors import CurateError
from curate.params import CleanParams
from curate.report import Verdict, thumbnail
from curate.report.render import DETAILS_DIR, METRICS_DIR, REPORTS_DIR, merge_figures, render, render_markdown
from curate.stage import flatten, guarded

WORKSPACE = "workspace"
TABLE = BALANCED_DIR / "samples.parquet"  # the train rows in play, with weights, plus test
THUMBS_PER_KIND = 16
WEIGHT_TOLERANCE = 1e-6
# A headline rate that moved by at least this much is listed first: one point is the spread the
# same data and params show between two CPUs (accuracy, flagged rate: tests/test_pipeline.py).
MOVED_RATE = 0.01
MOVED_COUNT_SHARE = 0.01  # a headline count (rows dropped, train rows) moved by 1% or more


class Revision:
    """Reads files as they were at one git revision / experiment, or in the workspace."""

    def __init__(self, rev: str | None):
        self.name = rev or WORKSPACE
        self._fs = None
        if rev is not None:
            from dvc.api import DVCFileSystem
            from dvc.exceptions import DvcException
            from dvc.repo import Repo
            from dvc.scm import RevError, resolve_rev

            try:
                with Repo(".") as repo:
                    sha = resolve_rev(repo.scm, rev)
                self._fs = DVCFileSystem(".", rev=sha)
            except (RevError, DvcException) as exc:
                raise CurateError(f"{rev}: not a git revision or experiment name ({exc})") from None

    def read(self, path: Path | str) -> bytes | None:
        """The file's bytes, or None when this revision has no such file or its data is in no cache."""
        try:
            if self._fs is None:
                return Path(path).read_bytes()
            with self._fs.open(str(path), "rb") as handle:
                return handle.read()
        except Exception:  # noqa: BLE001  (missing file; a DVC out in neither the cache nor a remote)
            return None

    def json(self, path: str) -> dict:
        data = self.read(path)
        return json.loads(data) if data else {}

    def figures(self, stage: str) -> dict:
        """The stage's metrics and details merged; a revision from before the split has only metrics."""
        return merge_figures(
            self.json(f"{REPORTS_DIR}/{METRICS_DIR}/{stage}.json"),
            self.json(f"{REPORTS_DIR}/{DETAILS_DIR}/{stage}.json"),
        )

    def params(self) -> dict:
        data = self.read("params.yaml")
        return flatten(yaml.safe_load(data) or {}) if data else {}

    def table(self, path: Path) -> pd.DataFrame | None:
        data = self.read(path)
        return pd.read_parquet(io.BytesIO(data)) if data else None

    def images(self) -> RevisionRows | None:
        """The raw store as this revision has it (segments read as rows are asked for)."""
        return RevisionRows.open(self.read, IMAGE_STORES["raw"])


@dataclass
class DataDiff:
    counts_by_class: list[list]
    counts_by_group: list[list]
    examples: dict[str, pd.DataFrame]  # kind -> rows (from B, or A for removed)
    totals: dict[str, int]


KINDS = ("added", "removed", "relabelled", "reweighted")


def diff_tables(a: pd.DataFrame, b: pd.DataFrame) -> DataDiff:
    """Match two sample tables on ``sample_id``; classify each train sample's change."""
    a = a[a["split"] == "train"].set_index("sample_id")
    b = b[b["split"] == "train"].set_index("sample_id")
    common = a.index.intersection(b.index)
    rows = {
        "added": b.loc[b.index.difference(a.index)],
        "removed": a.loc[a.index.difference(b.index)],
        "relabelled": b.loc[common[(a.loc[common, "label"] != b.loc[common, "label"]).to_numpy()]],
        "reweighted": b.loc[common[_effective_weight(a.loc[common]) != _effective_weight(b.loc[common])]],
    }
    if len(rows["relabelled"]):
        rows["relabelled"] = rows["relabelled"].assign(
            previous_label=a.loc[rows["relabelled"].index, "label_name"].to_numpy()
        )

    def counts(column: str) -> list[list]:
        keys = sorted(set(a[column]) | set(b[column]), key=str)
        return [[key, int((a[column] == key).sum()), int((b[column] == key).sum()),
                 *(int((rows[kind][column] == key).sum()) for kind in KINDS)]
                for key in keys]  # fmt: skip

    return DataDiff(
        counts_by_class=counts("label_name"),
        counts_by_group=counts("group"),
        examples={kind: frame.sort_index().head(THUMBS_PER_KIND) for kind, frame in rows.items()},
        totals={kind: len(frame) for kind, frame in rows.items()},
    )


def _effective_weight(table: pd.DataFrame) -> pd.Series:
    """How much a row counts in training: weight x copies, rounded against float noise."""
    weight = table["weight"] if "weight" in table.columns else 1.0
    copies = table["copies"] if "copies" in table.columns else 1
    return (pd.Series(weight, index=table.index) * copies / WEIGHT_TOLERANCE).round()


def metric_rows(a: Revision, b: Revision) -> list[list]:
    rows = []
    for stage in dag.reporting():  # gate verdicts have their own table
        before, after = flatten(a.figures(stage)), flatten(b.figures(stage))
        for key in sorted(set(before) | set(after)):
            old, new = before.get(key), after.get(key)
            if isinstance(old, list) or isinstance(new, list):  # e.g. a confusion matrix: see the reports
                continue
            numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, new))
            rows.append([f"{stage}.{key}", _show(old), _show(new), _delta(new - old) if numeric else ""])
    return rows


def headline_moves(a: Revision, b: Revision, moved_rate: float = MOVED_RATE) -> list[str]:
    """The headline metrics (reports/metrics/) that moved enough to read first: a rate (a figure
    within [0, 1] in both) by ``moved_rate`` or more, any other figure by 1% or more."""
    moves = []
    for stage in dag.reporting():
        before = flatten(a.json(f"{REPORTS_DIR}/{METRICS_DIR}/{stage}.json"))
        after = flatten(b.json(f"{REPORTS_DIR}/{METRICS_DIR}/{stage}.json"))
        for key in sorted(set(before) & set(after)):
            old, new = before[key], after[key]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (old, new)):
                continue
            rate = all(isinstance(v, float) and 0 <= v <= 1 for v in (old, new))
            if abs(new - old) >= (moved_rate if rate else max(MOVED_COUNT_SHARE * abs(old), 1)):
                moves.append(f"{stage}.{key}: {_show(old)} → {_show(new)} ({_delta(new - old)})")
    return moves


def look_first(gates: list[list], moves: list[str], data: DataDiff | None) -> list[str]:
    """What a reviewer reads first: gates whose verdict changed, the samples that changed, the
    headline metrics that moved."""
    lines = [f"gate {name}: {before} → {after}" for name, before, after in gates if before != after]
    if data is not None and any(data.totals.values()):
        counts = ", ".join(f"{data.totals[kind]:,} {kind}" for kind in KINDS)
        lines.append(f"train samples: {counts} (by class and group below)")
    return lines + moves


def _show(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{int(value)}" if value.is_integer() else f"{value:.4f}"
    return json.dumps(value) if not isinstance(value, str) else value


def _delta(value: float) -> str:
    return "0" if value == 0 else f"{value:+.4f}" if isinstance(value, float) else f"{value:+d}"


def param_rows(a: Revision, b: Revision) -> list[list]:
    before, after = a.params(), b.params()
    return [[key, _show(before.get(key)), _show(after.get(key))]
            for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]  # fmt: skip


def gate_rows(a: Revision, b: Revision) -> list[list]:
    """Each gate's verdict in both versions (``n/a``: not configured there)."""
    before, after = a.figures("gate"), b.figures("gate")

    def verdict(passed: Any) -> str:
        return "n/a" if passed is None else "pass" if passed else "FAIL"

    names = sorted(set(before.get("gates", {})) | set(after.get("gates", {})))
    return [["all gates", verdict(before.get("passed")), verdict(after.get("passed"))]] + [
        [name, verdict(before.get("gates", {}).get(name, {}).get("passed")),
         verdict(after.get("gates", {}).get(name, {}).get("passed"))]
        for name in names
    ]  # fmt: skip


def added_decisions(
    before: bytes | None, after: bytes | None, names: tuple[str, str] = ("before", "after")
) -> list[list[str]]:
    """The ledger rows of ``after`` that ``before`` lacks (a changed row counts as added), in
    ``after``'s order; a missing ledger has no rows. Rows compare on the ledger's columns, so
    reordering the columns or the rows adds nothing. ``names`` name the two in messages. The
    clean stage checks each line (``curate.data.ledger``); compare only lists what changed."""
    old = Counter(_ledger_rows(before, names[0]))
    added = []
    for row in _ledger_rows(after, names[1]):
        if old[row]:
            old[row] -= 1
        else:
            added.append(list(row))
    return added


def _ledger_rows(data: bytes | None, name: str) -> list[tuple[str, ...]]:
    if not data:
        return []
    table = parse_ledger(io.BytesIO(data), name)  # the one strict reader clean uses
    return [tuple(row) for row in table.itertuples(index=False)]


def decision_rows(a: Revision, b: Revision) -> list[list[str]]:
    """Review decisions added between the two versions, each ledger read where its params put it."""

    paths = [rev.params().get("clean.decisions") or CleanParams().decisions for rev in (a, b)]
    return added_decisions(
        a.read(paths[0]), b.read(paths[1]), (f"{paths[0]} ({a.name})", f"{paths[1]} ({b.name})")
    )


def compare(
    rev_a: str | None, rev_b: str | None, html_path: str | None, moved_rate: float = MOVED_RATE
) -> str:
    a, b = Revision(rev_a), Revision(rev_b)
    table_a, table_b = a.table(TABLE), b.table(TABLE)
    # A fresh clone without a DVC remote has git's files (params, metrics, reports) but not the
    # data: compare what there is, and say so first.
    data = diff_tables(table_a, table_b) if table_a is not None and table_b is not None else None
    context = {
        "rev_a": a.name, "rev_b": b.name,
        "scope": scope_line(a, b, table_a, table_b),
        "params": param_rows(a, b),
        "metrics": [row for row in metric_rows(a, b) if row[1] != row[2]],
        "gates": (gates := gate_rows(a, b)),
        "look_first": look_first(gates, headline_moves(a, b, moved_rate), data),
        "moved_rate": moved_rate,
        "digests": digest_rows(a, b),
        "decisions": decision_rows(a, b),
        "ledger_columns": LEDGER_COLUMNS,
        "verdict": Verdict(warnings=[f"gate {name} fails in {b.name}" for name, _, now in gates[1:]
                                     if now == "FAIL"]),
        "diff": data,
        "kinds": KINDS,
        "class_headers": ["class", f"train rows in {a.name}", f"in {b.name}", *KINDS],
        "group_headers": ["group", f"train rows in {a.name}", f"in {b.name}", *KINDS],
    }  # fmt: skip
    if html_path:
        context["thumbs"] = _thumbnails(data, a, b) if data is not None else {}
        write_text(html_path, render("compare.html", stage="compare", **context))
    return render_markdown("compare.md", stage="compare", **context)


def scope_line(a: Revision, b: Revision, table_a: pd.DataFrame | None, table_b: pd.DataFrame | None) -> str:
    """One line: what was compared sample by sample, and what only by its figures."""
    if table_a is not None and table_b is not None:
        return f"Compared at the sample level ({TABLE} of both) and by figures (params, metrics, gates)."
    missing = " and ".join(rev.name for rev, table in ((a, table_a), (b, table_b)) if table is None)
    return (
        f"Compared by figures only (params, metrics, gates, report digests from git): {TABLE} of {missing} "
        "is in neither the workspace, the DVC cache nor a remote (dvc pull, or dvc repro at that revision)."
    )


def digest_rows(a: Revision, b: Revision) -> list[list[str]]:
    """Which stage digests (``reports/<stage>.md``, in git) differ between the two versions."""
    rows = []
    for stage in (*dag.reporting(), "gate"):
        before, after = a.read(f"reports/{stage}.md"), b.read(f"reports/{stage}.md")
        state = "missing" if before is None or after is None else "same" if before == after else "changed"
        rows.append([f"reports/{stage}.md", state])
    return rows


def _thumbnails(data: DataDiff, a: Revision, b: Revision) -> dict[str, list[dict]]:
    images = {"a": a.images(), "b": b.images()}
    thumbs = {}
    for kind, rows in data.examples.items():
        source = images["a" if kind == "removed" else "b"]
        if source is None:
            continue
        thumbs[kind] = [{
            "uri": thumbnail(source[row["row"]]),
            "caption": (f"{row['previous_label']}→{row['label_name']}" if kind == "relabelled"
                        else f"{row['label_name']} / {row['group']}"),
            "title": row["path"],
        } for _, row in rows.iterrows()]  # fmt: skip
    return thumbs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("rev_a", nargs="?", default="HEAD", help="the base version (default: HEAD)")
    parser.add_argument("rev_b", nargs="?", default=None, help="the new version (default: the workspace)")
    parser.add_argument("--html", metavar="FILE", help="also write an HTML report with thumbnails")
    parser.add_argument(
        "--moved", type=float, default=MOVED_RATE, metavar="RATE",
        help=f"list first a headline rate that moved this much (default: {MOVED_RATE})",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.stdout.write(compare(args.rev_a, args.rev_b, args.html, args.moved))
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))

"""``curate exps --html FILE``: the experiments table and the plots that answer what it asks.

A page under the reports' rules (no script, a Content-Security-Policy, every name escaped, charts
as inline SVG): the table of :mod:`curate.people.exps`, then accuracy against worst-group accuracy
(one labelled point per experiment, the baseline marked), then rows dropped against how often the
flags were right: detection F1 where true labels exist, else the precision people measured in
review; with neither, the page says why that plot is left out.
"""

from __future__ import annotations

from pathlib import Path

from markupsafe import Markup

from curate.data.atomic import write_text
from curate.people.exps_table import Table, cell_parts, is_number, legend, row_label
from curate.report import Verdict
from curate.report.render import render, scatter_chart

ACCURACY = ("evaluate.accuracy", "evaluate.worst_group_accuracy")
DROPPED = "clean.dropped"
# How often a flag was right, best evidence first: against true labels, then people's review.
FLAG_PRECISION = (
    ("clean.detect_f1", "detection F1 (against true labels)"),
    ("clean.review_precision", "review precision (people's decisions)"),
)


def plots(table: Table) -> tuple[list[tuple[str, Markup]], list[str]]:
    """``([(title, svg)], [sentence for each plot left out])``."""
    drawn, left_out = [], []
    baseline = next((row.name for row in table.rows if row.state == "baseline"), None)

    def points(x_key: str, y_key: str) -> list[tuple[float, float, str]]:
        measured = [row for row in table.rows if row.measured]
        return [(row.metrics[x_key], row.metrics[y_key], row.name) for row in measured
                if is_number(row.metrics.get(x_key)) and is_number(row.metrics.get(y_key))]  # fmt: skip

    found = points(*ACCURACY)
    if found:
        title = "Accuracy against worst-group accuracy"
        chart = scatter_chart(found, key="accuracy", marked=baseline, xlabel="accuracy",
                              ylabel="worst-group accuracy", title=title)  # fmt: skip
        drawn.append((title, chart))
    else:
        left_out.append("Accuracy against worst-group accuracy: no run has evaluate's figures yet.")
    for key, label in FLAG_PRECISION:
        found = points(DROPPED, key)
        if found:
            title = f"Rows dropped against {label}"
            chart = scatter_chart(found, key="dropped", marked=baseline, xlabel="train rows dropped by clean",
                                  ylabel=label, title=title)  # fmt: skip
            drawn.append((title, chart))
            break
    else:
        left_out.append(
            "Rows dropped against how often the flags were right: left out, as no run has true labels "
            "(detection F1) or review decisions in its ledger (review precision)."
        )
    return drawn, left_out


def write_page(path: str | Path, table: Table) -> None:
    charts, left_out = plots(table)
    failed = [row.name for row in table.rows if row.state == "failed"]
    waiting = [row.name for row in table.rows if row.state in {"queued", "running"}]
    warnings = [f"experiment {name} failed: dvc queue logs {name}" for name in failed]
    if waiting:
        warnings.append(f"{len(waiting)} experiment(s) queued or running: {', '.join(waiting)}")
    rows = [
        [(row_label(row), "", False)]
        + [(*cell_parts(table, row, column), row.name in table.best.get(column.key, ()))
           for column in table.columns]
        for row in table.rows
    ]  # fmt: skip
    write_text(
        path,
        render(
            "exps.html", stage="experiments", verdict=Verdict(warnings=warnings),
            # A zero-width space after each underscore lets a long name break there.
            headers=["experiment", *(column.header.replace("_", "_\u200b") for column in table.columns)],
            full_names=["", *(column.key for column in table.columns)],
            rows=rows, legend=legend(table).replace("* best", "bold: best").splitlines(),
            charts=charts, left_out=left_out,
        ),
    )  # fmt: skip

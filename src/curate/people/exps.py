"""curate exps: the experiments table, sized for a terminal, a pull-request comment or a page.

One row per experiment of ``dvc exp show`` (read from DVC, ``--json FILE`` for a recorded one):
its name, the params it sets otherwise than its baseline (short names), and the headline metrics
of the chosen view with their change against the baseline, the best value per column marked
``*``. The views come from the stages' own declarations (:class:`curate.stage.Stage`: ``view``,
``glance``, ``best``): ``glance`` (the default) shows the few figures each stage puts first,
``data`` and ``model`` all of those stages' metrics, ``all`` every metric. A table wider than the
terminal is cut into blocks of columns, each led by the experiment's name, never into ``…``.
``--md`` prints a Markdown table (a pull-request comment), ``--csv`` the raw values, and
``--html FILE`` writes a page with the table and the plots (:mod:`curate.people.exps_page`).
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
import textwrap
from collections.abc import Sequence

from curate.people.experiments import dvc_exp_show, read_show, runs
from curate.people.exps_page import write_page
from curate.people.exps_table import Table, build_table, cell, legend, row_label
from curate.report.render import escape_user_text

VIEWS = ("glance", "data", "model", "all")
GAP = "  "  # between two columns of the terminal table


def terminal(table: Table, width: int) -> str:
    """The table in blocks of columns no wider than ``width``, each led by the name column."""
    names = ["experiment", *(row_label(row) for row in table.rows)]
    body = [[cell(table, row, column) for row in table.rows] for column in table.columns]
    name_width = max(map(len, names))
    widths = [max(max(map(len, cells), default=1), 6) for cells in body]
    headers = [_header_lines(column.header, w) for column, w in zip(table.columns, widths, strict=True)]
    widths = [max(w, *map(len, lines)) for w, lines in zip(widths, headers, strict=True)]
    out = []
    for block in _blocks(widths, name_width, width):
        height = max((len(headers[i]) for i in block), default=1)
        for line in range(height):
            label = names[0] if line == height - 1 else ""
            parts = [label.ljust(name_width)]
            for i in block:
                lines = [""] * (height - len(headers[i])) + headers[i]
                parts.append(lines[line].rjust(widths[i]))
            out.append(GAP.join(parts).rstrip())
        out.append(GAP.join(["-" * name_width, *("-" * widths[i] for i in block)]))
        for r, name in enumerate(names[1:]):
            out.append(
                GAP.join([name.ljust(name_width), *(body[i][r].rjust(widths[i]) for i in block)]).rstrip()
            )
        out.append("")
    return "\n".join(out) + "".join(textwrap.fill(line, width, subsequent_indent="  ") + "\n"
                                    for line in legend(table).splitlines())  # fmt: skip


def _blocks(widths: list[int], name_width: int, width: int) -> list[list[int]]:
    """The columns' indices cut into blocks that fit ``width`` beside the name column (a column
    wider than that alone gets a block of its own)."""
    blocks: list[list[int]] = [[]]
    used = name_width
    for index, column_width in enumerate(widths):
        if blocks[-1] and used + len(GAP) + column_width > width:
            blocks.append([])
            used = name_width
        blocks[-1].append(index)
        used += len(GAP) + column_width
    return blocks


def _header_lines(header: str, width: int) -> list[str]:
    """A header broken at its underscores into lines no wider than ``width`` (or its longest word)."""
    lines: list[str] = []
    for word in header.split("_"):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += "_" + word
        else:
            lines.append(word)
    return lines


def markdown(table: Table) -> str:
    """One Markdown table (a pull-request comment), best values in bold."""

    def md(text: str) -> str:
        return str(escape_user_text(text))

    header = ["experiment", *(column.header for column in table.columns)]
    lines = ["| " + " | ".join(map(md, header)) + " |", "|" + "---|" + "---:|" * len(table.columns)]
    for row in table.rows:
        cells = [md(row_label(row))]
        for column in table.columns:
            text = md(cell(table, row, column, best_mark=""))
            cells.append(f"**{text}**" if row.name in table.best.get(column.key, ()) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + legend(table).replace("* best", "**bold**: best")


def comma_separated(table: Table) -> str:
    """The raw values, one row per experiment, full names as headers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["experiment", "state", "rev", "baseline", *(column.key for column in table.columns)])
    for row in table.rows:
        values = [table.value(row, column) for column in table.columns]
        writer.writerow(
            [row.name, row.state, row.rev, row.baseline, *("" if v is None else v for v in values)]
        )
    return buffer.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate exps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--view", choices=VIEWS, default="glance", help="which metrics (default: glance)")
    parser.add_argument("--sort", metavar="METRIC", help="experiments best first by this metric")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--md", action="store_true", help="print a Markdown table")
    shape.add_argument("--csv", action="store_true", help="print the raw values as CSV")
    parser.add_argument("--html", metavar="FILE", help="also write a page with the table and plots")
    parser.add_argument("--width", type=int, help="terminal width (default: the terminal's, or $COLUMNS)")
    parser.add_argument(
        "--rev", action="append", default=[], metavar="REV",
        help="these commits and their experiments (repeat it; each compared with the first), not HEAD",
    )  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="read a recorded `dvc exp show --json` instead of DVC")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from curate.people.declared import declarations  # imports every stage module (and torch)

    args = build_parser().parse_args(argv)
    show = read_show(args.json) if args.json else dvc_exp_show(args.rev)
    table = build_table(runs(show), declarations(), args.view, args.sort)
    if args.html:
        write_page(args.html, table)
    if args.md:
        sys.stdout.write(markdown(table))
    elif args.csv:
        sys.stdout.write(comma_separated(table))
    else:
        width = args.width or shutil.get_terminal_size().columns
        sys.stdout.write(terminal(table, max(width, 40)))
    return 0

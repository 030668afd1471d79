"""The experiments table every ``curate exps`` format prints: its columns, rows and cells.

Rows are DVC's (:mod:`curate.people.experiments`); columns are the params some run changed and
the headline metrics of a view, chosen from the stages' declarations (:class:`curate.stage.Stage`:
``view``, ``glance``, ``best``); cells show a metric with its change against the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from curate.errors import CurateError
from curate.people.experiments import Run, changed_params, short_names
from curate.stage import Stage

UNFINISHED = ("queued", "running", "failed")  # states shown beside an experiment's name


@dataclass(frozen=True)
class Column:
    """One column of the table: a param or a headline metric (``<stage>.<metric>``)."""

    key: str
    header: str
    better: Literal["higher", "lower"] | None = None
    is_metric: bool = False


@dataclass(frozen=True)
class Table:
    """The table every format prints: its columns and rows, baselines first."""

    columns: list[Column]
    rows: list[Run]
    baselines: Mapping[str, Run]
    best: Mapping[str, set[str]]  # column key -> names of the rows holding its best value

    def value(self, row: Run, column: Column) -> Any:
        return (row.metrics if column.is_metric else row.params).get(column.key)

    def change(self, row: Run, column: Column) -> float | None:
        """A metric's change against the row's baseline; None where either is not a number."""
        base = self.baselines.get(row.baseline)
        now, then = self.value(row, column), None if base is None or base is row else self.value(base, column)
        if not (is_number(now) and is_number(then)) or isinstance(now, bool):
            return None
        return now - then


def metric_columns(declared: Mapping[str, Stage], view: str) -> list[Column]:
    """The headline metrics of ``view``, in DAG order, each with the way it is better."""
    columns = []
    for name, stage in declared.items():
        if view == "glance":
            chosen = stage.glance
        elif view == "all" or stage.view == view:
            chosen = stage.metrics
        else:
            chosen = ()
        columns += [Column(f"{name}.{metric}", metric, stage.better(metric), True) for metric in chosen]
    return columns


def build_table(all_runs: Sequence[Run], declared: Mapping[str, Stage], view: str, sort: str | None) -> Table:
    baselines = {row.name: row for row in all_runs if row.is_reference}
    rows = [row for row in all_runs if row.state != "workspace" or _differs(row, baselines.get(row.baseline))]
    measured = [row for row in rows if row.measured]
    # A metric no run has (detect_f1 without true labels) is no column.
    metrics = [c for c in metric_columns(declared, view) if any(c.key in row.metrics for row in measured)]
    params = changed_params(rows, baselines)
    names = short_names(params)
    columns = [Column(key, names[key]) for key in params] + metrics
    table = Table(columns, rows, baselines, {})
    if sort is not None:
        table = Table(columns, _sorted(table, _sort_column(metrics, sort)), baselines, {})
    return Table(columns, table.rows, baselines, {c.key: _best(table, c) for c in metrics})


def _differs(workspace: Run, base: Run | None) -> bool:
    """Whether the workspace shows something its baseline does not (edited params, new figures)."""
    return base is None or workspace.params != base.params or workspace.metrics != base.metrics


def _sort_column(metrics: Sequence[Column], sort: str) -> Column:
    for column in metrics:
        if sort in {column.key, column.header}:
            return column
    shown = ", ".join(column.header for column in metrics)
    raise CurateError(f"--sort {sort}: not a metric of this view (it has: {shown})")


def _sorted(table: Table, column: Column) -> list[Run]:
    """Baselines first, then the experiments best first by ``column`` (largest first where no way
    is better); rows without the figure last, in DVC's order."""
    sign = 1 if column.better == "lower" else -1
    firsts = [row for row in table.rows if row.is_reference]
    rest = [row for row in table.rows if not row.is_reference]
    ranked = [row for row in rest if is_number(table.value(row, column))]
    ranked.sort(key=lambda row: sign * table.value(row, column))
    return firsts + ranked + [row for row in rest if row not in ranked]


def _best(table: Table, column: Column) -> set[str]:
    """The rows holding the column's best value, where there is a best and not every row has it."""
    values = {row.name: table.value(row, column) for row in table.rows if row.measured}
    numbers = {name: float(v) for name, v in values.items() if is_number(v)}
    if column.better is None or len(set(numbers.values())) < 2:
        return set()
    best = (max if column.better == "higher" else min)(numbers.values())
    return {name for name, value in numbers.items() if value == best}


def is_number(value: Any) -> bool:
    """A figure to compare or plot: a number (a gate's verdict counts as 0 or 1), not NaN."""
    return isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value))


# --- cells ----------------------------------------------------------------------------------


def row_label(row: Run) -> str:
    return f"{row.name} ({row.state})" if row.state in UNFINISHED else row.name


def number(value: Any) -> str:
    """A figure as the table shows it: counts with separators, rates to 3 places."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def signed(change: float | None, value: Any) -> str:
    """A change against the baseline; empty where there is none (so changes stand out)."""
    if change is None or change == 0:
        return ""
    if isinstance(value, int):
        return f"{change:+,}"
    text = f"{change:+.3f}"
    return "" if float(text) == 0 else text


def cell_parts(table: Table, row: Run, column: Column) -> tuple[str, str]:
    """``(value, change)`` as shown; the change is empty for a param, a baseline, or no change."""
    value = table.value(row, column)
    if not column.is_metric:
        return ("-" if value is None else _param_text(value)), ""
    if not row.measured:
        return "-", ""
    return number(value), signed(table.change(row, column), value)


def cell(table: Table, row: Run, column: Column, best_mark: str = "*") -> str:
    text = " ".join(part for part in cell_parts(table, row, column) if part)
    return text + best_mark if row.name in table.best.get(column.key, ()) else text


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def legend(table: Table) -> str:
    """What the short names stand for, and the marks."""
    lines = []
    params = [column for column in table.columns if not column.is_metric and column.header != column.key]
    if params:
        lines.append("params: " + ", ".join(f"{column.header} = {column.key}" for column in params))
    if any(table.best.values()):
        lines.append("* best in its column; a signed figure is the change against the baseline")
    return "".join(line + "\n" for line in lines)

"""Render stage reports: ``reports/<stage>.{html,md}`` and the stage's figures as JSON.

A stage's figures go to two files, split by the headline metrics it declares (``Stage.metrics``):
``reports/metrics/<stage>.json``
(the DVC metrics, the columns of ``dvc exp show`` and ``dvc metrics diff``: a fixed few per
stage, whatever the number of classes or groups) and ``reports/details/<stage>.json``
(everything else: per-class and per-group figures, counts, the measured throughput; a plain
out in git). The gate, the data card and ``curate compare`` read both (:func:`read_figures`,
:func:`merge_figures`).

Reports are versioned next to the data they describe, so they must be:

* safe: autoescape on, and every value a template prints goes through
  :func:`escape_user_text`, which also neutralises Markdown syntax, so a class
  folder named ``<img src=x onerror=alert(1)>`` or ``a|b`` renders as text in
  both the HTML and the Markdown digest; no JavaScript, no external URL, and a
  Content-Security-Policy that forbids both;
* self-contained: charts are inline SVG, thumbnails are PNG data URIs;
* deterministic: byte-identical for identical inputs (fixed SVG hash salt, no
  dates in SVG metadata, sorted JSON keys, no timestamps or absolute paths);
* small: at most :data:`MAX_REPORT_BYTES`; templates sample and aggregate;
* traceable: beside them, ``reports/lineage/<stage>.json`` records the SHA-256 of every data
  file the stage read and wrote (not a DVC metric: it adds no ``dvc exp show`` column), so the
  gate stage can tell figures of the current data from stale ones.

:func:`curate.report.writer.write_stage` writes all of a stage's report files; this module
renders and splits.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from curate.data.imaging import to_pil
from curate.data.paths import REPORTS_DIR
from curate.errors import CurateError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
MAX_REPORT_BYTES = 2_000_000
METRICS_DIR = "metrics"  # under the reports folder: the DVC metrics
DETAILS_DIR = "details"  # under the reports folder: every other figure, not a DVC metric


# Characters that would change a Markdown digest's structure (table cells,
# links, code spans, emphasis), written as numeric entities: they render as
# themselves in HTML and in GitHub Markdown, tables included. Underscores stay
# readable in the raw diff: GitHub does not emphasise inside words.
_MARKDOWN_ENTITIES = {c: f"&#{ord(c)};" for c in "|*`[]\\"} | {"\n": " ", "\r": " "}
_MARKDOWN_PATTERN = re.compile("|".join(re.escape(c) for c in _MARKDOWN_ENTITIES))


def escape_user_text(value: Any) -> Any:
    """Jinja ``finalize``: escape every printed string for HTML and Markdown alike.

    Markup (our own charts and data URIs) passes untouched; numbers pass as they are.
    """
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    escaped = str(escape(value))
    return Markup(_MARKDOWN_PATTERN.sub(lambda m: _MARKDOWN_ENTITIES[m.group(0)], escaped))


def _fmt(value: Any, digits: int = 3) -> str:
    """Numbers for people: ints with thousands separators, floats to ``digits`` places."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "n/a"
        # Whole numbers (counts, effective sizes) read better without ".000"; a sum of floats
        # such as a Kish effective size lands a rounding error off its whole number.
        if math.isfinite(value):
            whole = round(float(value))
            if abs(float(value) - whole) <= 1e-9 * max(1.0, abs(whole)):
                return f"{whole:,}"
        return f"{float(value):,.{digits}f}"
    return str(value)


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.{digits}f}%"


ENV = Environment(
    loader=PackageLoader("curate.report", "templates"),
    autoescape=True,
    finalize=escape_user_text,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
ENV.filters["fmt"] = _fmt
ENV.filters["pct"] = _pct


def render(template: str, **context: Any) -> str:
    return ENV.get_template(template).render(csp=CSP, **context)


def render_markdown(template: str, **context: Any) -> str:
    # Blank-line runs left by template blocks would be noise in every PR diff.
    return re.sub(r"\n{3,}", "\n\n", render(template, **context))


def split_figures(
    headline: Sequence[str], figures: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(headline, details)``: the figures named in ``headline`` (a stage's declared metrics), and
    everything else.

    A headline key the stage did not compute (clean's detect_* without a true_label) is simply
    absent. The list is fixed per stage, so the columns of ``dvc exp show`` do not grow with the
    classes or groups; train_report's images_per_second stays a detail: measured, it differs on
    every run, and as a metric it would show every experiment as changed.
    """
    return (
        {key: value for key, value in figures.items() if key in headline},
        {key: value for key, value in figures.items() if key not in headline},
    )


def merge_figures(metrics: Mapping[str, Any], details: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's figures from its two files, as the stage computed them.

    An older revision, from before the split, has every figure in its metrics file and no
    details file (``{}``): the merge reads both layouts alike.
    """
    return {**details, **metrics}


def read_figures(stage: str, reports_dir: str | Path = REPORTS_DIR) -> dict[str, Any]:
    """All of ``stage``'s figures, as it computed them: its metrics file merged with its details.

    A missing or unreadable metrics file stops with one line; a missing details file reads as
    none (outputs from before the split), so a gate on a figure in neither is "not measured".
    """
    reports_dir = Path(reports_dir)
    metrics_path = reports_dir / METRICS_DIR / f"{stage}.json"
    if not metrics_path.exists():
        raise CurateError(f"{metrics_path}: not found (run the {stage} stage first: dvc repro)")
    details_path = reports_dir / DETAILS_DIR / f"{stage}.json"
    details = _read_figure_file(details_path) if details_path.exists() else {}
    return merge_figures(_read_figure_file(metrics_path), details)


def _read_figure_file(path: Path) -> dict[str, Any]:
    rerun = f"re-run the {path.stem} stage (dvc repro)"  # metrics/<stage>.json, details/<stage>.json
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CurateError(f"{path}: not readable as JSON ({exc}); {rerun}") from None
    if not isinstance(values, dict):
        raise CurateError(f"{path}: not a JSON object of figures; {rerun}")
    return values


def metrics_json(metrics: Mapping[str, Any]) -> str:
    """Figures as JSON (metrics and details alike): sorted keys, plain types, floats rounded so
    noise-free diffs stay quiet."""
    return json.dumps(_plain(metrics), indent=2, sort_keys=True) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), 6)
    return value


def thumbnail(image: np.ndarray) -> Markup:
    """A PNG data URI of one H x W x C uint8 image (shown enlarged, pixelated, by CSS)."""
    buffer = io.BytesIO()
    to_pil(np.asarray(image)).save(buffer, format="PNG", optimize=True)
    return Markup("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))


def svg(figure: plt.Figure, key: str) -> Markup:
    """Inline SVG of a matplotlib figure, byte-stable across runs.

    ``key`` salts the element ids so two charts on one page never share an id.
    Text stays ``<text>`` (escaped by matplotlib) rather than glyph paths, which
    keeps charts small and keeps user strings out of XML comments.
    """
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"curate-{key}", "svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return Markup(text[text.index("<svg") :])


def bar_chart(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    key: str,
    ylabel: str = "",
    title: str = "",
    stacked: bool = False,
) -> Markup:
    """A grouped (or stacked) bar chart: one bar per series within each category."""
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9}):
        width_in = min(11.0, 1.2 + 0.45 * len(categories) * (1 if stacked else max(1, len(series))))
        figure, axes = plt.subplots(figsize=(max(4.0, width_in), 3.0))
        positions = np.arange(len(categories))
        bar_width = 0.8 if stacked else 0.8 / max(1, len(series))
        bottom = np.zeros(len(categories))
        for index, (name, values) in enumerate(series.items()):
            values = np.asarray(values, dtype=float)
            offset = 0.0 if stacked else (index - (len(series) - 1) / 2) * bar_width
            axes.bar(
                positions + offset, values, bar_width, label=str(name), bottom=bottom if stacked else None
            )
            if stacked:
                bottom = bottom + values
        axes.set_xticks(
            positions,
            [str(c) for c in categories],
            rotation=45 if len(categories) > 12 else 0,
            ha="right" if len(categories) > 12 else "center",
        )
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.spines[["top", "right"]].set_visible(False)
        if len(series) > 1:
            # Beside the axes, not on them: bars fill the plot area, so any inside spot hides a
            # bar; the tight bounding box widens the figure to fit.
            axes.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return svg(figure, key)


def line_chart(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    key: str,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    mark_x: float | None = None,
    mark_label: str = "",
) -> Markup:
    """Lines over a shared x (learning curves); ``mark_x`` draws a dashed vertical marker (best epoch)."""
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9}):
        figure, axes = plt.subplots(figsize=(5.0, 3.0))
        for name, values in series.items():
            axes.plot(list(x), np.asarray(values, dtype=float), marker="o", markersize=3, label=str(name))
        if mark_x is not None:
            axes.axvline(mark_x, color="#57606a", linestyle="--", linewidth=1, label=mark_label or None)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.spines[["top", "right"]].set_visible(False)
        axes.legend(frameon=False)
        return svg(figure, key)


def matrix_chart(
    matrix: np.ndarray,
    row_names: Sequence[str],
    column_names: Sequence[str],
    *,
    key: str,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
) -> Markup:
    """A heat map with the count in each cell (a confusion matrix); vector cells, no embedded raster."""
    matrix = np.asarray(matrix, dtype=float)
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 8}):
        side = 1.5 + 0.42 * max(len(column_names), 4)
        figure, axes = plt.subplots(figsize=(side, side * len(row_names) / max(len(column_names), 1)))
        axes.pcolormesh(matrix, cmap="Blues", edgecolors="white", linewidth=0.5)
        peak = matrix.max() if matrix.size else 0.0
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                color = "white" if value > 0.6 * peak else "#1f2328"
                axes.text(j + 0.5, i + 0.5, f"{value:g}", ha="center", va="center", color=color)
        axes.set_xticks(np.arange(len(column_names)) + 0.5, [str(c) for c in column_names])
        axes.set_yticks(np.arange(len(row_names)) + 0.5, [str(r) for r in row_names])
        axes.invert_yaxis()
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        return svg(figure, key)


def scatter_chart(
    points: Sequence[tuple[float, float, str]],
    *,
    key: str,
    marked: str | None = None,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
) -> Markup:
    """One labelled point per ``(x, y, label)``, points at the same place sharing one label; the
    point labelled ``marked`` (a baseline) drawn as a larger red diamond, "(baseline)" in its label."""
    places: dict[tuple[float, float], list[str]] = {}
    for x, y, label in points:
        places.setdefault((float(x), float(y)), []).append(str(label))
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9}):
        figure, axes = plt.subplots(figsize=(5.5, 4.0))
        for (x, y), labels in places.items():
            is_marked = marked in labels
            names = [f"{label} (baseline)" if label == marked else label for label in labels]
            axes.scatter(
                [x], [y], s=70 if is_marked else 30, marker="D" if is_marked else "o",
                color="#cf222e" if is_marked else "#0969da", zorder=3,
            )  # fmt: skip
            axes.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.margins(0.2)
        axes.grid(True, color="#d0d7de", linewidth=0.5)
        axes.spines[["top", "right"]].set_visible(False)
        return svg(figure, key)


def interval_chart(
    categories: Sequence[str],
    values: Sequence[float],
    intervals: Sequence[tuple[float, float]],
    *,
    key: str,
    bar: float | None = None,
    bar_label: str = "",
    acted: Sequence[bool] | None = None,
    ylabel: str = "",
    title: str = "",
) -> Markup:
    """A point with its interval per category (NaN: none drawn), a dashed line at ``bar``; points
    whose ``acted`` is False drawn hollow (the categories a rule left alone)."""
    acted = [True] * len(categories) if acted is None else list(acted)
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9}):
        figure, axes = plt.subplots(figsize=(max(4.0, 1.5 + 0.9 * len(categories)), 3.0))
        for x, (value, (low, high), filled) in enumerate(zip(values, intervals, acted, strict=True)):
            if np.isnan(value):
                continue
            axes.errorbar(
                [x], [value], yerr=[[max(value - low, 0.0)], [max(high - value, 0.0)]], fmt="o", capsize=4,
                color="#0969da",
                markerfacecolor="#0969da" if filled else "white", zorder=3,
            )  # fmt: skip
        if bar is not None:
            axes.axhline(bar, color="#cf222e", linestyle="--", linewidth=1, label=bar_label or None)
            axes.legend(frameon=False, loc="lower left")
        axes.set_xticks(np.arange(len(categories)), [str(c) for c in categories])
        axes.set_xlim(-0.5, len(categories) - 0.5)
        axes.set_ylim(0, 1.05)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(True, axis="y", color="#d0d7de", linewidth=0.5)
        axes.spines[["top", "right"]].set_visible(False)
        return svg(figure, key)

"""The report kit: one Jinja2 environment, one base layout, inline charts and thumbnails."""

from curate.report.render import (
    Check,
    Verdict,
    bar_chart,
    line_chart,
    matrix_chart,
    thumbnail,
    write_report,
)

__all__ = ["Check", "Verdict", "bar_chart", "line_chart", "matrix_chart", "thumbnail", "write_report"]

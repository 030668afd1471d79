"""The report kit: one Jinja2 environment, one base layout, inline charts and thumbnails.

``Check`` and ``Verdict`` belong to :mod:`curate.curation.gates`; they are named here too because every
report opens with one.
"""

from curate.curation.gates import Check, Verdict
from curate.report.render import bar_chart, line_chart, matrix_chart, thumbnail

__all__ = ["Check", "Verdict", "bar_chart", "line_chart", "matrix_chart", "thumbnail"]

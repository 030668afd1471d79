"""The one writer of a stage's report: every stage with a report hands its figures, its report
context and its :class:`curate.data.lineage.Lineage` to :func:`write_stage`, and nothing else writes
``reports/<stage>.{html,md}``, its figures or its lineage.

In that order: the stage's gates join its verdict (one place, so each stage shows its gates the
same way), the report is rendered and checked for size, then written with its figures, split into
the headline DVC metrics and the details (:func:`curate.report.render.split_figures`), and the
lineage goes last (see :meth:`curate.data.lineage.Lineage.record`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curate.curation.gates import gate_checks
from curate.data.atomic import write_text
from curate.data.lineage import Lineage
from curate.data.paths import REPORTS_DIR
from curate.errors import CurateError
from curate.params import Params
from curate.report import render as kit
from curate.stage import Stage


def write_stage(
    stage: Stage,
    params: Params,
    figures: Mapping[str, Any],
    context: dict[str, Any],
    lineage: Lineage | None,
    reports_dir: str | Path = REPORTS_DIR,
) -> dict[str, int]:
    """Write ``stage``'s report, figures and lineage; return the byte sizes of the html and md.

    ``figures``: all the stage computed (its ``metrics(result)``); ``context``: its
    ``report_context(params, result)``, whose ``verdict`` gets the stage's declared gates.
    ``lineage``: what the stage read and wrote, recorded with what the run used
    (:meth:`curate.stage.Stage.record`); None for the gate stage, which reads every stage's
    figures and writes no data, so no stage's staleness depends on it.
    """
    reports_dir, name = Path(reports_dir), stage.name
    context["verdict"].checks.extend(gate_checks(params.gates, {name: stage.gates}, {name: figures}))
    html = kit.render(f"{name}.html", stage=name, **context)
    markdown = kit.render_markdown(f"{name}.md", stage=name, **context)
    if len(html.encode()) > kit.MAX_REPORT_BYTES:
        raise CurateError(
            f"reports/{name}.html: {len(html.encode()):,} bytes, over the {kit.MAX_REPORT_BYTES:,}-byte "
            "cap (a template shows too many rows or thumbnails)"
        )
    write_text(reports_dir / f"{name}.html", html)
    write_text(reports_dir / f"{name}.md", markdown)
    headline, details = kit.split_figures(stage.metrics, figures)
    write_text(reports_dir / kit.METRICS_DIR / f"{name}.json", kit.metrics_json(headline))
    write_text(reports_dir / kit.DETAILS_DIR / f"{name}.json", kit.metrics_json(details))
    if lineage is not None:
        lineage.record(name, reports_dir, run=stage.record(params))
    return {"html": len(html.encode()), "md": len(markdown.encode())}

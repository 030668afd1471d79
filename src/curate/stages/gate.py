"""gate: check the quality gates on every stage's figures; write the data card.

Reads every stage's figures (``reports/metrics/<stage>.json``, the headline, and
``reports/details/<stage>.json``, the rest: a gate may judge either) and ``params.yaml``;
writes ``reports/gate.{html,md}``, ``reports/metrics/gate.json`` (``passed``),
``reports/details/gate.json`` (per gate: threshold, observed value and verdict) and
``reports/index.{html,md}``: the data card of this version of the data set (the DAG,
each stage's numbers and gates, links to every report, the params that differ from the
template's defaults). With ``gates.enforce: true`` a failed gate fails ``dvc repro``, one
line per failed gate.

Before any threshold, it checks that each stage's figures are those of the current
data: every file in ``reports/lineage/<stage>.json`` must still have the SHA-256 the
stage recorded (see :func:`curate.curation.gates.stale_stages`). A stale stage (say train and
evaluate after ``curate augment`` alone) shows as ``stale`` with the reason, its figures
are left out of the data card, and it fails the gate, its gates with it.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from curate import dag
from curate.curation.gates import Check, Verdict, failures, gate_checks, recorded_gates, stale_stages
from curate.curation.removal_cap import curation_note
from curate.data.atomic import write_text
from curate.data.lineage import LINEAGE_DIR, file_digest
from curate.data.paths import REPORTS_DIR
from curate.params import GatesParams, Params, load_params
from curate.report.render import (
    DETAILS_DIR,
    METRICS_DIR,
    read_figures,
    render,
    render_markdown,
)
from curate.report.writer import write_stage
from curate.stage import Gate, Stage, flatten, guarded, stage_parser

STAGE = Stage(
    "gate",
    metrics=("passed",),
    glance=("passed",),
    best={"passed": "higher"},
)

# Measured on the machine, so different on every run: left out of the data card,
# which must only change when the data or params do.
MEASURED = {("train_report", "images_per_second")}


@dataclass(frozen=True)
class Gated:
    """Every gate on every stage's figures, after the staleness check."""

    gates: GatesParams  # the thresholds
    declared: dict[str, dict[str, Gate]]  # stage -> the gates its run recorded (curate.stage.Stage.gates)
    headline: dict[str, set[str]]  # stage -> its headline metrics, as its run recorded them
    figures: dict[str, dict[str, Any]]  # stage -> its figures (metrics merged with details), DAG order
    stale: dict[str, str]  # stage -> why its figures are not those of the current data
    checks: list[Check]  # one per configured gate

    @property
    def passed(self) -> bool:
        return not self.stale and all(check.passed for check in self.checks)


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("gate", __doc__).parse_args(argv)
    params = load_params(args.params)
    # The stages and their order come from dvc.yaml; what each declared, from its run's record.
    figures = {stage: read_figures(stage) for stage in dag.reporting()}
    lineages = {stage: read_lineage(stage) for stage in dag.lineage_stages()}
    # Each file once, though several stages name it (data/raw/images: five of them).
    result = compute(params, figures, lineages, functools.cache(file_digest))
    context = report_context(params, result)
    # No lineage: the gate reads every stage's figures and writes no data.
    write_stage(STAGE, params, metrics(result), context, None)
    write_index(params, result, context["verdict"])
    stale, checks = result.stale, result.checks
    causes = {"max_flagged_rate": note} if (note := flag_note(params, result)) else {}
    failed = [f"gate failed: {stage} is stale: {why}" for stage, why in stale.items()]
    failed += failures(checks, causes)
    for line in failed:
        print(line, file=sys.stderr)
    if failed and params.gates.enforce:
        return 1
    passed = sum(check.passed for check in checks)
    print(f"gate: {passed} of {len(checks)} gate(s) passed, {len(stale)} stage(s) stale; reports/index.html")
    return 0


def compute(
    params: Params,
    figures: dict[str, dict[str, Any]],
    lineages: Mapping[str, Mapping[str, Mapping[str, str]] | None],
    digest: Callable[[str], str | None],
) -> Gated:
    """The staleness of each stage (:func:`curate.curation.gates.stale_stages`), then every gate
    that a stage with figures declared (as its lineage file records it)."""
    stale = stale_stages(lineages, digest)
    for stage in figures:
        if stage not in stale and "run" not in (lineages.get(stage) or {}):
            stale[stage] = "no run record (it ran before runs were recorded): re-run it"
    declared = {stage: recorded_gates(lineages.get(stage)) for stage in figures}
    runs = {stage: (lineages.get(stage) or {}).get("run") or {} for stage in figures}
    headline = {stage: set(run.get("metrics") or ()) for stage, run in runs.items()}
    checks = gate_checks(params.gates, declared, figures, stale)
    return Gated(params.gates, declared, headline, figures, stale, checks)


def metrics(result: Gated) -> dict[str, Any]:
    """``passed``, the DVC metric; and per gate: threshold, observed figure (``stale``: none to
    trust), verdict."""
    results = {}
    owners = {key: (stage, gate) for stage, gates in result.declared.items() for key, gate in gates.items()}
    for check in result.checks:
        stage, gate = owners[check.key]
        observed = "stale" if stage in result.stale else result.figures[stage].get(gate.metric)
        results[check.key] = {"threshold": result.gates.threshold(check.key), "observed": observed,
                              "passed": check.passed}  # fmt: skip
    return {"passed": result.passed, "gates": results}


def report_context(params: Params, result: Gated) -> dict[str, Any]:
    verdict = Verdict(checks=[*map(stale_check, result.stale), *result.checks])
    # What clean did with a high flagged rate or a binding cap comes first, on the data card too.
    verdict.warnings += [note] if (note := flag_note(params, result)) else []
    verdict.warnings += [f"{stage} is stale: {reason}" for stage, reason in result.stale.items()]
    if not result.checks:
        verdict.warnings.append("no gate is configured (every gates.* param is null)")
    stale, enforce = result.stale, params.gates.enforce
    return {"verdict": verdict, "enforce": enforce, "gates": result.checks, "stale": stale}


def flag_note(params: Params, result: Gated) -> str | None:
    """clean's :func:`curate.curation.removal_cap.curation_note`, unless its figures are stale or predate
    it."""
    figures = result.figures.get("clean", {})
    if "clean" in result.stale or "held_back" not in figures:
        return None
    return curation_note(figures, params.clean, params.gates.max_flagged_rate)


def stale_check(stage: str) -> Check:
    """The failing verdict line of a stage whose figures are not those of the current data."""
    return Check(
        name=f"{stage} figures are of the current data", observed="stale", threshold="current", passed=False
    )


def read_lineage(stage: str) -> dict[str, dict[str, str]] | None:
    """What ``stage`` recorded of the files it read and wrote; None when there is no usable record."""
    path = REPORTS_DIR / LINEAGE_DIR / f"{stage}.json"
    try:
        lineage = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable or not JSON: no record to trust
        return None
    if not isinstance(lineage, dict) or not all(
        isinstance(lineage.get(k), dict) for k in ("inputs", "outputs")
    ):
        return None
    return lineage


def write_index(params: Params, result: Gated, verdict: Verdict) -> None:
    """The data card, ``reports/index.{html,md}``: a stale stage's figures are left out."""
    figures, stale = result.figures, result.stale
    stages = []
    for stage in figures:
        checks = gate_checks(params.gates, {stage: result.declared[stage]}, figures, stale)
        status = "stale" if stage in stale else "fail" if any(not c.passed for c in checks) else "pass"
        stages.append({
            "name": stage,
            "status": status,
            "stale": stale.get(stage, ""),
            "checks": checks,
            "numbers": [] if stage in stale else card_numbers(stage, figures[stage], result.headline[stage]),
        })  # fmt: skip
    context = {
        "verdict": verdict,
        "dag": dag_rows(),
        "stages": stages,
        "changed_params": changed_params(params),
    }
    write_text(REPORTS_DIR / "index.html", render("index.html", stage="index", **context))
    write_text(REPORTS_DIR / "index.md", render_markdown("index.md", stage="index", **context))


def card_numbers(stage: str, figures: Mapping[str, Any], headline: set[str]) -> list[tuple[str, Any, str]]:
    """The data card's rows ``(figure, value, file)``: the headline metrics first, then the details.

    Lists (a confusion matrix) are for the stage report; measured figures are left out.
    """
    rows = [(key, value, METRICS_DIR if key in headline else DETAILS_DIR)
            for key, value in flatten(figures).items()
            if (stage, key) not in MEASURED and not isinstance(value, list)]  # fmt: skip
    return sorted(rows, key=lambda row: row[2] != METRICS_DIR)  # stable: each file's own order


def dag_rows() -> list[list[str]]:
    """Each stage of dvc.yaml with the data it reads and writes (code and reports left out).

    DVC refuses dvc.yaml as a dependency; an edit that matters changes some stage's
    command, deps or params, which re-runs it and then this stage.
    """
    stages = (
        yaml.safe_load(dag.DVC_FILE.read_text(encoding="utf-8"))["stages"] if dag.DVC_FILE.exists() else {}
    )

    def data(paths: list) -> str:
        names = [next(iter(p)) if isinstance(p, dict) else p for p in paths or []]
        return ", ".join(n for n in names if n.startswith(("data/", "models/")) and not n.endswith(".py"))

    return [[name, data(stage.get("deps")), data(stage.get("outs"))] for name, stage in stages.items()]


def changed_params(params: Params) -> list[list[str]]:
    """Dotted params whose value differs from the template default, with both values."""
    actual = flatten(params.model_dump(mode="json"))
    default = flatten(Params().model_dump(mode="json"))
    return [[key, _show(default.get(key)), _show(value)]
            for key, value in sorted(actual.items()) if default.get(key) != value]  # fmt: skip


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


if __name__ == "__main__":
    sys.exit(guarded(main))

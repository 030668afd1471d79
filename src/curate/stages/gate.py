"""gate: check the quality gates on every stage's metrics; write the data card.

Reads ``reports/metrics/<stage>.json`` of every stage and ``params.yaml``; writes
``reports/gate.{html,md}``, ``reports/metrics/gate.json`` (``passed`` and, per
gate, threshold, observed value and verdict) and ``reports/index.{html,md}``: the
data card of this version of the data set (the DAG, each stage's numbers and
gates, links to every report, the params that differ from the template's
defaults). With ``gates.enforce: true`` a failed gate fails ``dvc repro``, one
line per failed gate.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from curate.dataset import write_text
from curate.errors import CurateError
from curate.gates import GATES, failures, gate_checks
from curate.params import Params, load_params
from curate.report import Verdict, write_report
from curate.report.render import REPORTS_DIR, render, render_markdown
from curate.stage import PIPELINE, flatten, guarded, stage_parser

# Measured on the machine, so different on every run: left out of the data card,
# which must only change when the data or params do.
MEASURED = {("train", "images_per_second")}
DVC_FILE = Path("dvc.yaml")


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("gate", __doc__).parse_args(argv)
    params = load_params(args.params)
    metrics = {stage: read_metrics(stage) for stage in PIPELINE}
    checks = gate_checks(params.gates, None, metrics)
    verdict = Verdict(checks=checks)
    if not checks:
        verdict.warnings.append("no gate is configured (every gates.* param is null)")
    passed = {check.key: check.passed for check in checks}
    gate_metrics = {
        "passed": all(check.passed for check in checks),
        "gates": {
            name: {"threshold": getattr(params.gates, name),
                   "observed": metrics[gate.stage].get(gate.metric),
                   "passed": passed[name]}
            for name, gate in GATES.items() if getattr(params.gates, name) is not None
        },
    }  # fmt: skip
    context = {"verdict": verdict, "enforce": params.gates.enforce}
    write_report("gate", context, gate_metrics)
    write_index(params, metrics, verdict)
    failed = failures(checks)
    for line in failed:
        print(line, file=sys.stderr)
    if failed and params.gates.enforce:
        return 1
    print(f"gate: {len(checks) - len(failed)} of {len(checks)} gate(s) passed; reports/index.html")
    return 0


def read_metrics(stage: str) -> dict[str, Any]:
    path = REPORTS_DIR / "metrics" / f"{stage}.json"
    if not path.exists():
        raise CurateError(f"{path}: not found (run the upstream stage first: dvc repro)")
    return json.loads(path.read_text(encoding="utf-8"))


def write_index(params: Params, metrics: Mapping[str, Mapping], verdict: Verdict) -> None:
    """The data card, ``reports/index.{html,md}``."""
    stages = []
    for stage in PIPELINE:
        checks = gate_checks(params.gates, stage, metrics)
        stages.append({
            "name": stage,
            "status": "fail" if any(not c.passed for c in checks) else "pass",
            "checks": checks,
            "numbers": [(key, value) for key, value in flatten(metrics[stage]).items()
                        if (stage, key) not in MEASURED and not isinstance(value, list)],
        })  # fmt: skip
    context = {
        "verdict": verdict,
        "dag": dag_rows(),
        "stages": stages,
        "changed_params": changed_params(params),
    }
    write_text(REPORTS_DIR / "index.html", render("index.html", stage="index", **context))
    write_text(REPORTS_DIR / "index.md", render_markdown("index.md", stage="index", **context))


def dag_rows() -> list[list[str]]:
    """Each stage of dvc.yaml with the data it reads and writes (code and reports left out).

    DVC refuses dvc.yaml as a dependency; an edit that matters changes some stage's
    command, deps or params, which re-runs it and then this stage.
    """
    stages = yaml.safe_load(DVC_FILE.read_text(encoding="utf-8"))["stages"] if DVC_FILE.exists() else {}

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

"""Quality gates: thresholds on stage metrics, checked in each stage's verdict and by ``gate``.

A gate is a ``gates.<name>`` param (null: not checked) on one metric of one stage.
The stage that produces the metric shows the gate in its report's verdict; the final
``gate`` stage checks them all and, with ``gates.enforce: true``, fails ``dvc repro``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from curate.params import GatesParams
from curate.report import Check


@dataclass(frozen=True)
class Gate:
    stage: str
    metric: str
    bound: str  # "min": observed >= threshold; "max": observed <= threshold


GATES = {
    "max_flagged_rate": Gate("clean", "flagged_rate", "max"),
    "min_detect_f1": Gate("clean", "detect_f1", "min"),
    "min_group_share_ratio": Gate("rebalance", "group_share_ratio_after", "min"),
    "max_frechet_distance": Gate("augment", "frechet_distance", "max"),
    "min_accuracy": Gate("evaluate", "accuracy", "min"),
    "min_worst_group_accuracy": Gate("evaluate", "worst_group_accuracy", "min"),
    "max_accuracy_gap": Gate("evaluate", "accuracy_gap", "max"),
}


def gate_checks(
    gates: GatesParams, stage: str | None, metrics_by_stage: Mapping[str, Mapping]
) -> list[Check]:
    """One :class:`Check` per configured gate of ``stage`` (every stage when None).

    A metric that is missing or null (e.g. ``detect_f1`` without a ``true_label``
    column) fails its gate: a gate that cannot be measured does not pass silently.
    """
    checks = []
    for name, gate in GATES.items():
        threshold = getattr(gates, name)
        if threshold is None or (stage is not None and gate.stage != stage):
            continue
        observed = metrics_by_stage.get(gate.stage, {}).get(gate.metric)
        measurable = isinstance(observed, int | float) and not math.isnan(observed)
        if gate.bound == "min":
            passed = measurable and observed >= threshold
        else:
            passed = measurable and observed <= threshold
        sign = "≥" if gate.bound == "min" else "≤"  # not >= / <=: those need escaping in Markdown
        checks.append(Check(
            name=f"{gate.stage}.{gate.metric} (gates.{name})",
            observed=observed if measurable else "not measured",
            threshold=f"{sign} {threshold:g}",
            passed=bool(passed),
            key=name,
        ))  # fmt: skip
    return checks


def failures(checks: list[Check]) -> list[str]:
    """One line per failed gate, for the error output of an enforcing ``gate`` stage."""
    return [f"gate failed: {c.name}: observed {_show(c.observed)}, required {c.threshold}"
            for c in checks if not c.passed]  # fmt: skip


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def show_gates(context: dict, gates: GatesParams, stage: str, metrics: Mapping[str, Any]) -> dict:
    """Add ``stage``'s gates to the verdict of its report context (so its banner shows them)."""
    context["verdict"].checks.extend(gate_checks(gates, stage, {stage: metrics}))
    return context

"""Quality gates: thresholds on stage figures, checked in each stage's verdict and by ``gate``.

A gate is a ``gates.<name>`` param (null: not checked) on one figure of one stage: a
headline metric or a detail (``gate`` reads both files: :func:`curate.report.render.read_figures`).
The stage that produces the metric shows the gate in its report's verdict; the final
``gate`` stage checks them all and, with ``gates.enforce: true``, fails ``dvc repro``.

The gate stage first checks that each stage's figures are those of the current data
(:func:`stale_stages`, on the lineage each stage records): a stale stage's gates fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from curate.params import GatesParams


@dataclass(frozen=True)
class Check:
    """One verdict line: what was measured against which bound, and whether it holds."""

    name: str
    observed: Any
    threshold: str
    passed: bool
    key: str | None = None  # the gates.* param a gate check comes from, so code finds it by key


@dataclass
class Verdict:
    """A report's opening: checks (pass/fail) and warnings a reviewer should read."""

    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if any(not check.passed for check in self.checks):
            return "fail"
        return "warn" if self.warnings else "pass"


@dataclass(frozen=True)
class Gate:
    stage: str
    metric: str
    bound: str  # "min": observed >= threshold; "max": observed <= threshold


GATES = {
    "max_flagged_rate": Gate("clean", "flagged_rate", "max"),
    "min_detect_f1": Gate("clean", "detect_f1", "min"),
    "min_review_precision": Gate("clean", "review_precision", "min"),
    "min_group_share_ratio": Gate("rebalance", "group_share_ratio_after", "min"),
    "max_frechet_distance": Gate("augment", "frechet_distance", "max"),
    "min_accuracy": Gate("evaluate", "accuracy", "min"),
    "min_worst_group_accuracy": Gate("evaluate", "worst_group_accuracy", "min"),
    "max_accuracy_gap": Gate("evaluate", "accuracy_gap", "max"),
}


def gate_checks(
    gates: GatesParams,
    stage: str | None,
    metrics_by_stage: Mapping[str, Mapping],
    stale: Collection[str] = (),
) -> list[Check]:
    """One :class:`Check` per configured gate of ``stage`` (every stage when None).

    A metric that is missing or null (e.g. ``detect_f1`` without a ``true_label``
    column) fails its gate: a gate that cannot be measured does not pass silently.
    Nor does one whose stage is in ``stale``: its figures are of other data (observed ``stale``).
    """
    checks = []
    for name, gate in GATES.items():
        threshold = getattr(gates, name)
        if threshold is None or (stage is not None and gate.stage != stage):
            continue
        observed = metrics_by_stage.get(gate.stage, {}).get(gate.metric)
        measurable = isinstance(observed, int | float) and not math.isnan(observed)
        if gate.stage in stale:
            passed, observed = False, "stale"
        else:
            passed = measurable and (observed >= threshold if gate.bound == "min" else observed <= threshold)
            observed = observed if measurable else "not measured"
        sign = "≥" if gate.bound == "min" else "≤"  # not >= / <=: those need escaping in Markdown
        checks.append(Check(
            name=f"{gate.stage}.{gate.metric} (gates.{name})",
            observed=observed,
            threshold=f"{sign} {threshold:g}",
            passed=bool(passed),
            key=name,
        ))  # fmt: skip
    return checks


def failures(checks: list[Check], causes: Mapping[str, str] | None = None) -> list[str]:
    """One line per failed gate, for the error output of an enforcing ``gate`` stage; a gate's
    cause (by gate name in ``causes``), where one is known, follows its figures."""
    causes = causes or {}
    return [f"gate failed: {c.name}: observed {_show(c.observed)}, required {c.threshold}"
            + (f": {causes[c.key]}" if c.key in causes else "")
            for c in checks if not c.passed]  # fmt: skip


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def stale_stages(
    lineages: Mapping[str, Mapping[str, Mapping[str, str]] | None],
    digest: Callable[[str], str | None],
) -> dict[str, str]:
    """Stage -> why its figures are not those of the current data; current stages are left out.

    ``lineages`` maps each stage, in DAG order, to its recorded ``{"inputs": {path: sha256},
    "outputs": {...}}`` (None: no record); ``digest(path)`` is the file's SHA-256 now (None:
    missing). A stage is stale when a file it read or wrote has changed since it ran, when it
    has no record, or when a file it read was written by a stage that is itself stale: its
    figures then describe data made from data that is no longer there.
    """
    stale: dict[str, str] = {}
    writers: dict[str, str] = {}
    for stage, lineage in lineages.items():
        if lineage is None:
            stale[stage] = "no lineage record (it ran before lineage was recorded, or did not finish)"
            continue
        changed = _changed_files(lineage, digest)
        upstream = sorted({writers[path] for path in lineage["inputs"] if writers.get(path) in stale})
        if changed:
            stale[stage] = changed
        elif upstream:
            several = len(upstream) > 1
            stale[stage] = (
                f"upstream stage{'s' * several} {', '.join(upstream)} {'are' if several else 'is'} stale"
            )
        writers |= dict.fromkeys(lineage["outputs"], stage)
    return stale


def _changed_files(lineage: Mapping[str, Mapping[str, str]], digest: Callable[[str], str | None]) -> str:
    """``its inputs a, b changed since it ran; its output c is missing`` ('' when all match)."""
    found: dict[tuple[str, bool], list[str]] = {}
    for kind in ("input", "output"):
        for path, recorded in sorted(lineage[f"{kind}s"].items()):
            now = digest(path)
            if now != recorded:
                found.setdefault((kind, now is None), []).append(path)
    return "; ".join(
        f"its {kind}{'s' if len(paths) > 1 else ''} {', '.join(paths)} "
        + (("are" if len(paths) > 1 else "is") + " missing" if missing else "changed since it ran")
        for (kind, missing), paths in found.items()
    )

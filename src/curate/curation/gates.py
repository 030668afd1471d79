"""Quality gates: thresholds on stage figures, checked in each stage's verdict and by ``gate``.

A gate is a ``gates.<name>`` param (null: not checked) on one figure of one stage: a
headline metric or a detail (``gate`` reads both files: :func:`curate.report.render.read_figures`).
Each stage declares its gates (``Stage.gates``) and records them with each run in its lineage
file, where the gate stage finds them (:func:`recorded_gates`).
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
from curate.stage import Gate


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


def gate_checks(
    thresholds: GatesParams,
    gates: Mapping[str, Mapping[str, Gate]],
    figures: Mapping[str, Mapping],
    stale: Collection[str] = (),
) -> list[Check]:
    """One :class:`Check` per configured gate: ``gates`` maps each stage to what it declared
    (``gates.<key>`` -> :class:`curate.stage.Gate`), ``figures`` each stage to its figures.

    A metric that is missing or null (e.g. ``detect_f1`` without a ``true_label``
    column) fails its gate: a gate that cannot be measured does not pass silently.
    Nor does one whose stage is in ``stale``: its figures are of other data (observed ``stale``).
    """
    checks = []
    for stage, declared in gates.items():
        for key, gate in declared.items():
            threshold = thresholds.threshold(key)
            if threshold is not None:
                observed = figures.get(stage, {}).get(gate.metric)
                checks.append(_check(stage, key, gate, threshold, observed, stage in stale))
    return checks


def _check(stage: str, key: str, gate: Gate, threshold: float, observed: Any, stale: bool) -> Check:
    measurable = isinstance(observed, int | float) and not math.isnan(observed)
    if stale:
        passed, observed = False, "stale"
    else:
        passed = measurable and (observed >= threshold if gate.bound == "min" else observed <= threshold)
        observed = observed if measurable else "not measured"
    sign = "≥" if gate.bound == "min" else "≤"  # not >= / <=: those need escaping in Markdown
    return Check(
        name=f"{stage}.{gate.metric} (gates.{key})",
        observed=observed,
        threshold=f"{sign} {threshold:g}",
        passed=bool(passed),
        key=key,
    )


def recorded_gates(lineage: Mapping[str, Any] | None) -> dict[str, Gate]:
    """The gates a stage declared, as its run recorded them in its lineage file (none: no record)."""
    run = (lineage or {}).get("run") or {}
    return {key: Gate(spec["metric"], spec["bound"]) for key, spec in (run.get("gates") or {}).items()}


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

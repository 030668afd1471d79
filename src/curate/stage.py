"""What every stage shares: its declaration, its argument parser, the error guard.

A kit module: stages and the CLI import it, it imports no stage. Each stage module declares
what is its own once, as ``STAGE = Stage(...)`` (its headline metrics, its gates, its params
section), and ends with ``if __name__ == "__main__": sys.exit(guarded(main))``, so
``python -m curate.stages.<stage>`` behaves as ``curate <stage>``. Where it sits in the DAG,
what it writes and which params it reads are in ``dvc.yaml`` (:mod:`curate.dag`); what it
declared here, each run records in its lineage file (:meth:`Stage.record`), where the gate
stage and the data card read it: no other module keeps a list of stages.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from curate.errors import CurateError
from curate.params import Params
from curate.validation import validated


@dataclass(frozen=True)
class Gate:
    """A bound on one of the stage's figures (a headline metric or a detail), set by a ``gates.*`` param."""

    metric: str
    bound: Literal["min", "max"]  # min: observed >= threshold; max: observed <= threshold


@dataclass(frozen=True)
class Stage:
    """What a stage is, declared once in its module.

    ``metrics``: its headline figures, the columns of ``dvc exp show`` (reports/metrics/<name>.json);
    every other figure it computes goes to reports/details/<name>.json. ``gates``: ``gates.<key>``
    -> the figure it bounds. ``section``: the model of its own ``params.yaml`` section, for a stage
    added to the template (the template's own sections are typed in :mod:`curate.params`).

    How ``curate exps`` shows them: ``view``, the table its metrics belong to (``--view data`` or
    ``model``); ``glance``, the few of them the default view shows; ``best``, which way is better
    for a metric no gate bounds (a gate's bound says it for the others: ``min`` -> higher is better).
    """

    name: str
    metrics: tuple[str, ...] = ()
    gates: Mapping[str, Gate] = field(default_factory=dict)
    section: type[BaseModel] | None = None
    view: Literal["data", "model"] | None = None
    glance: tuple[str, ...] = ()
    best: Mapping[str, Literal["higher", "lower"]] = field(default_factory=dict)

    def better(self, metric: str) -> Literal["higher", "lower"] | None:
        """Which way ``metric`` is better, or None where no way is (a count of rows dropped)."""
        if metric in self.best:
            return self.best[metric]
        bounds = {gate.bound for gate in self.gates.values() if gate.metric == metric}
        return {"min": "higher", "max": "lower"}.get(bounds.pop()) if len(bounds) == 1 else None

    def settings(self, params: Params, params_file: str | Path = "params.yaml") -> Any:
        """This stage's own params section, validated (a typo is refused with the dotted key)."""
        if self.section is None:
            return getattr(params, self.name, None)
        raw = params.added_section(self.name)
        return validated(self.section, {} if raw is None else raw, Path(params_file), (self.name,))

    def record(self, params: Params, params_file: str | Path = "params.yaml") -> dict[str, Any]:
        """What this run used, for its lineage file: its params section, its headline metrics, and
        its gates with their thresholds (the gate stage checks them; the reports show them)."""
        settings = self.settings(params, params_file)
        return {
            "params": settings.model_dump(mode="json") if settings is not None else {},
            "metrics": list(self.metrics),
            "gates": {key: {"metric": gate.metric, "bound": gate.bound,
                            "threshold": params.gates.threshold(key)}
                      for key, gate in self.gates.items()},
        }  # fmt: skip


def stage_parser(stage: str, description: str | None) -> argparse.ArgumentParser:
    """The options every stage takes."""
    parser = argparse.ArgumentParser(prog=f"curate {stage}", description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def guarded(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a stage ``main``; turn a :class:`CurateError` into one line on stderr and exit code 2."""
    try:
        return main(argv)
    except CurateError as exc:
        print(f"curate: error: {exc}", file=sys.stderr)
        return exc.exit_code


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as one level of dotted keys (``by_group.mnist.accuracy``), as DVC shows them."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat

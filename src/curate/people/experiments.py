"""The experiments as DVC records them (``dvc exp show --json``), read into rows people compare.

DVC is the store: this module keeps no list of its own. One :class:`Run` per row of
``dvc exp show``: the workspace, each baseline commit and its experiments, queued, running and
failed ones included. Params are flattened to dotted keys (``clean.action``); metrics are named
``<stage>.<metric>`` after their file, ``reports/metrics/<stage>.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.stage import flatten

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Run:
    """One row of ``dvc exp show``: a baseline commit, the workspace, or an experiment."""

    name: str
    rev: str
    state: str  # baseline | workspace | success | queued | running | failed
    baseline: str  # the name of the row it is compared with: the baseline it was run from; for the
    # workspace and a later ``--rev`` baseline the first baseline listed (its own, for that one)
    params: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_reference(self) -> bool:
        """A row others are compared with: a baseline commit, or the workspace."""
        return self.state in {"baseline", "workspace"}

    @property
    def measured(self) -> bool:
        """Whether it has figures to compare: a run that has not run or failed has none."""
        return self.state in {"baseline", "workspace", "success"}


def dvc_exp_show(revs: Sequence[str] = (), cwd: str | Path = ".") -> list[dict[str, Any]]:
    """``dvc exp show --json`` of the repo at ``cwd`` (of ``revs`` and their experiments, without
    the workspace, when given); DVC's own message on failure."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    chosen = [arg for rev in revs for arg in ("--rev", rev)] + (["--hide-workspace"] if revs else [])
    try:
        done = subprocess.run(
            ["dvc", "exp", "show", "--json", *chosen], cwd=cwd, env=env, capture_output=True, text=True
        )
    except OSError as exc:
        raise CurateError(f"dvc exp show: could not run dvc ({exc})") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CurateError(f"dvc exp show --json failed: {last}")
    return _parsed(done.stdout, "dvc exp show --json")


def read_show(path: str | Path) -> list[dict[str, Any]]:
    """A recorded ``dvc exp show --json`` document."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CurateError(f"{path}: not readable ({exc.strerror})") from None
    return _parsed(text, str(path))


def _parsed(text: str, source: str) -> list[dict[str, Any]]:
    try:
        show = json.loads(text)
    except ValueError as exc:
        raise CurateError(f"{source}: not JSON ({exc})") from None
    if not isinstance(show, list) or not all(isinstance(entry, dict) and "rev" in entry for entry in show):
        raise CurateError(f"{source}: not the output of dvc exp show --json (a list of revisions)")
    return show


def runs(show: Sequence[Mapping[str, Any]]) -> list[Run]:
    """Every row of the document, in DVC's order: the workspace, then each baseline followed by
    its experiments (newest first, as DVC lists them)."""
    rows = []
    # The workspace, and any later baseline (``--rev BASE --rev HEAD``), are compared with the
    # first baseline DVC lists: HEAD by default, BASE in a review.
    first = next((_name(entry) for entry in show if entry["rev"] != "workspace"), "workspace")
    for entry in show:
        own = _name(entry)
        state = "workspace" if entry["rev"] == "workspace" else "baseline"
        rows.append(_run(entry, own, state, first))
        for group in entry.get("experiments") or []:
            state = (group.get("executor") or {}).get("state") or "success"
            for revision in group.get("revs") or []:
                name = group.get("name") or _name(revision)
                rows.append(_run(revision, name, "failed" if revision.get("error") else state, own))
    return rows


def _name(revision: Mapping[str, Any]) -> str:
    rev = str(revision["rev"])
    return revision.get("name") or (rev if rev == "workspace" else rev[:7])


def _run(revision: Mapping[str, Any], name: str, state: str, baseline: str) -> Run:
    data = revision.get("data") or {}
    return Run(
        name=name,
        rev=str(revision["rev"]),
        state=state,
        baseline=baseline,
        params=_params(data.get("params") or {}),
        metrics=_metrics(data.get("metrics") or {}) if state != "queued" else {},
    )


def _params(files: Mapping[str, Any]) -> dict[str, Any]:
    """Params as dotted keys; keys of a params file other than params.yaml carry its name
    (``other.yaml:key``), as in ``dvc exp show``."""
    return _flat(files, lambda path: "" if path == PARAMS_FILE else f"{path}:")


def _metrics(files: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics of ``reports/metrics/<stage>.json`` as ``<stage>.<metric>``."""
    return _flat(files, lambda path: f"{Path(path).stem}.")


def _flat(files: Mapping[str, Any], prefix: Callable[[str], str]) -> dict[str, Any]:
    """DVC's ``{file: {"data": {...}}}`` as one level of keys, each file's under ``prefix(file)``."""
    flat = {}
    for path, content in files.items():
        flat |= {
            prefix(path) + key: value for key, value in flatten((content or {}).get("data") or {}).items()
        }
    return flat


def changed_params(rows: Sequence[Run], baselines: Mapping[str, Run]) -> list[str]:
    """The params some run sets otherwise than the row it is compared with, in params.yaml's order."""
    changed: dict[str, None] = {}
    for row in rows:
        base = baselines.get(row.baseline)
        if base is None or row is base:
            continue
        for key in [*base.params, *row.params]:
            if base.params.get(key) != row.params.get(key):
                changed[key] = None
    return list(changed)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its shortest tail that no other key of ``keys`` ends with
    (``clean.action`` -> ``action``; ``train.seed`` and ``folds.seed`` keep their section)."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            tail = ".".join(parts[-size:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in keys):
                break
        short[key] = tail
    return short

"""The removal cap: how many train rows each class and each group may lose to ``clean``.

Pure pandas, no cleanlab or torch: ``clean`` sizes and spends these budgets
(:func:`curate.curation.label_issues.decide_actions`), recording for each row it holds back which
budgets were spent and the rate they were sized from (:class:`Hold`); a held-back row's
``action_reason`` (which ``curate trace`` shows) and the clean report's cap lines
(:func:`cap_lines`) format that record. :func:`curation_note` is the line the clean report, the
data card and the gate lead with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from curate.params import CleanParams

KINDS = ("label", "group")  # a budget per class and per group


@dataclass(frozen=True)
class Sizing:
    """How clean sized the removal budgets, as the decision used it: ``clean.cap``,
    ``clean.max_drop_fraction``, ``clean.min_examples_per_class`` (``min_rows``) and
    ``asked_rate``, the share of the train rows asked to be dropped (a relabel request keeps its
    row), which the relative cap adds."""

    cap: str
    max_drop_fraction: float
    asked_rate: float
    min_rows: int

    @property
    def share(self) -> float:
        """The share of its rows a class or group may lose, before rounding down (and, under the
        relative cap, before ``min_rows`` stay)."""
        return self.max_drop_fraction + (self.asked_rate if self.cap == "relative" else 0.0)


@dataclass(frozen=True)
class Budget:
    """How many of its ``rows`` train rows a class (``kind`` label, ``key`` its label) or a group
    (``kind`` group) may lose: ``size``, ``floor(share x rows)``, or ``rows - min_rows`` where that
    is less under the relative cap (``min_rows_bound``). ``given_back``: the rows relabelled into
    the class before the budget was spent, each of which gave one removal back."""

    kind: str
    key: object
    rows: int
    size: int
    min_rows_bound: bool = False
    given_back: int = 0


@dataclass(frozen=True)
class Hold:
    """Why the cap held one train row back, recorded where it was decided
    (:func:`curate.curation.label_issues.decide_actions`): what the row asked for (``drop`` |
    ``relabel``), the budgets already ``spent`` when its turn came (its class's, and for a drop its
    group's), and how all budgets were sized."""

    request: str
    spent: tuple[Budget, ...]
    sizing: Sizing


def removal_budgets(train: pd.DataFrame, sizing: Sizing) -> dict[tuple[str, object], Budget]:
    """How many rows each class (``("label", k)``) and each group (``("group", g)``) of ``train`` may lose.

    ``absolute``: ``floor(max_drop_fraction x rows)``. ``relative``: ``floor((asked_rate +
    max_drop_fraction) x rows)``, where ``asked_rate`` is the share of all train rows asked to
    be dropped, and at least ``min_rows`` rows stay. A class or group is then held back only
    when it is flagged far more than the rest (a hard class, a small group the models know
    badly), never because the noise is global: at 50% uniform noise the absolute cap kept the
    least suspicious flips, the ambiguous images, and the model learnt them (README, "When
    curation pays").
    """
    share = sizing.share
    budgets = {}
    for kind in KINDS:
        for key, count in train[kind].value_counts().items():
            size = int(np.floor(share * count))
            bound = sizing.cap == "relative" and count - sizing.min_rows < size
            if bound:
                size = count - sizing.min_rows
            budgets[(kind, key)] = Budget(kind, key, int(count), max(size, 0), bound)
    return budgets


def cap_lines(holds: Mapping[object, Hold]) -> list[str]:
    """Where the cap bound, from the decision's ``holds``: per class (``label k``) and per group,
    how many removals its spent budget held back."""
    bound: dict[tuple[str, object], int] = {}
    for hold in holds.values():
        for budget in hold.spent:
            bound[(budget.kind, budget.key)] = bound.get((budget.kind, budget.key), 0) + 1
    return [f"{kind} {key}: {n} removal(s) held back" for (kind, key), n in sorted(bound.items(), key=str)]


def curation_note(
    figures: Mapping[str, Any], settings: CleanParams, max_flagged_rate: float | None
) -> str | None:
    """The line a clean report, the data card and a failed ``max_flagged_rate`` gate lead with when
    the fold models were too weak to act on (``clean.min_fold_skill``), the flagged rate is over
    that gate or the cap held rows back: what was flagged, removed, relabelled and held back, what
    became of those, and the params that decide it. None otherwise."""
    rate, held = figures["flagged_rate"], figures["held_back"]
    over = max_flagged_rate is not None and rate > max_flagged_rate
    threshold = f", over gates.max_flagged_rate {max_flagged_rate:g}" if over else ""
    skill = figures.get("fold_skill")  # absent from figures written before clean measured it
    if skill is not None and skill < settings.min_fold_skill and figures["flagged"]:
        return (
            f"{figures['flagged']} train rows flagged ({rate:.1%}{threshold}) and none acted on: the fold "
            f"models agree with the given labels little more than chance (fold skill {skill:.2f} < "
            f"clean.min_fold_skill {settings.min_fold_skill:g}), so their flags are no evidence. Train them "
            "longer (folds.epochs, folds.min_steps) or look at the labels"
        )
    if not (over or held):
        return None
    params = f"clean.cap {settings.cap}, clean.max_drop_fraction {settings.max_drop_fraction:g}"
    why = (
        "A rate this high means noise throughout or fold models too weak to judge"
        if over
        else "A class or group was flagged far more than the rest (see the cap lines below)"
    )
    return (
        f"{figures['flagged']} train rows flagged ({rate:.1%}{threshold}): {figures['dropped']} removed, "
        f"{figures['relabelled']} relabelled, {held} held back by the removal cap and trained on with "
        f"their given labels ({params}, clean.action {settings.action}). {why}: look at the "
        "flagged samples. clean.cap and clean.max_drop_fraction decide how many go; clean.action keep "
        "removes none"
    )

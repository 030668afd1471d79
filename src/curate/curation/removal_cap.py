"""The removal cap: how many train rows each class and each group may lose to ``clean``.

Pure pandas, no cleanlab or torch: ``clean`` spends these budgets
(:func:`curate.curation.label_issues.decide_actions`) and explains a held-back row with them (its
``action_reason``, which ``curate trace`` shows); :func:`curation_note` is the line the clean
report, the data card and the gate lead with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from curate.params import CleanParams

KINDS = ("label", "group")  # a budget per class and per group


def removal_budgets(
    train: pd.DataFrame, asked_rate: float, *, max_drop_fraction: float, cap: str, min_rows: int
) -> dict[tuple[str, object], int]:
    """How many rows each class (``("label", k)``) and each group (``("group", g)``) of ``train`` may lose.

    ``absolute``: ``floor(max_drop_fraction x rows)``. ``relative``: ``floor((asked_rate +
    max_drop_fraction) x rows)``, where ``asked_rate`` is the share of all train rows asked to
    be removed, and at least ``min_rows`` rows stay. A class or group is then held back only
    when it is flagged far more than the rest (a hard class, a small group the models know
    badly), never because the noise is global: at 50% uniform noise the absolute cap kept the
    least suspicious flips, the ambiguous images, and the model learnt them (README, "When
    curation pays").
    """
    share = max_drop_fraction + (asked_rate if cap == "relative" else 0.0)
    budgets = {}
    for kind in KINDS:
        for key, count in train[kind].value_counts().items():
            budget = int(np.floor(share * count))
            if cap == "relative":
                budget = min(budget, count - min_rows)
            budgets[(kind, key)] = max(budget, 0)
    return budgets


def held_back(actions: pd.Series, flagged: pd.Series, action: str) -> pd.Series:
    """The rows the cap held back, from clean's automatic ``actions``: kept though asked to go.
    With ``clean.action`` keep, a flagged row is kept by choice; only a near-duplicate was asked."""
    return (actions == "keep") & (~flagged | (action != "keep"))


def asked_rate(train: pd.DataFrame, action: str) -> float:
    """The share of ``train`` (clean's output rows) that clean asked to remove: the rows it
    dropped and those the cap held back, by ``auto_action`` (people's decisions left aside)."""
    auto = train["auto_action"]
    asked = (auto == "drop") | held_back(auto, train["is_label_issue"], action)
    return float(asked.mean()) if len(train) else 0.0


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

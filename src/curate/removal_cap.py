"""The removal cap: how many train rows each class and each group may lose to ``clean``.

Pure pandas, no cleanlab or torch: ``clean`` spends these budgets (:func:`curate.label_issues.decide_actions`)
and ``curate trace`` explains a held-back row with them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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


def asked_rate(train: pd.DataFrame, action: str) -> float:
    """The share of ``train`` (clean's output rows) that clean's own decision asked to remove:
    those it dropped and those the cap held back (``auto_action`` keep, unless ``action`` is keep
    and the row is only flagged: flag-only keeps those by choice)."""
    auto = train["auto_action"]
    held = (auto == "keep") & (~train["is_label_issue"] | (action != "keep"))
    return float(((auto == "drop") | held).mean()) if len(train) else 0.0

"""What the rebalance report says about a :class:`~curate.curation.balance.Rebalanced` result:
its tables, headline figures, explanations and warnings, as plain lists and strings.

It sits in ``curation/``, beside :mod:`curate.curation.balance`, and not in ``curate.report``:
``curate.report`` holds the rendering every stage shares (the Jinja environment, charts,
thumbnails) and is a layer above the kits, while this module only reads one kit's result and
renders nothing, so it is tested without templates or the chart code. The charts, which need
the renderer, are drawn by the stage (``curate.stages.rebalance``).
"""

from __future__ import annotations

import pandas as pd

from curate.curation.balance import Rebalanced
from curate.curation.gates import Verdict
from curate.data.splits import training_rows
from curate.params import RebalanceParams

MAX_NAMED_CELLS = 10
GROUP_HEADERS = [
    "group", "train rows", "min_group_size", "share before", "share after", "mean weight",
    "ESS before", "ESS after",
    "label dependence before", "label dependence after", "KL before", "KL after",
]  # fmt: skip
CELL_HEADERS = [
    "group", "class", "train rows", "share before", "share after", "P(y|g) before", "P(y|g) after",
]  # fmt: skip
HOW = {
    "none": "strategy none: every train row keeps weight 1; the numbers only measure.",
    "group": "strategy group: w = n / (G n_g), so every group gets the same total weight; "
    "the label mix within each group stays as it is.",
    "group_label": "strategy group_label (Kamiran-Calders): w = P(g) P(y) / P(g, y) from the counts, "
    "so the label distribution of every group becomes the overall one and group totals stay as they are.",
    "target": "strategy target: w = n share_g / n_g with share_g from rebalance.target_shares.",
}
TOO_SMALL_HOW = (
    " Groups with fewer than rebalance.min_group_size = {size} train rows are too small to rebalance: "
    "their rows keep weight 1 (their total stays their row count) and the strategy runs over the other "
    "groups as if they were absent (strategy target: the other groups' shares rescaled to sum to 1). "
    "The rebalanced rows' weights have mean 1 among themselves, so all train rows have mean 1 too. "
    "The group share ratio before and after (the gated metric) is over the groups large enough to "
    "rebalance (over all groups when fewer than two are); the ratio over all groups is shown beside it."
)
RESAMPLE_HOW = (
    " Method resample: each group x label cell is drawn its total weight in rows (rounded, largest "
    "remainder): every row of the cell floor(m/n) times and a seeded random m mod n of them once more. "
    "copies counts the draws; weight is 1."
)
DEFINITIONS = (
    "Share: the part of the total train weight in a group (or cell), weight x copies. "
    "Group share ratio: smallest group share / largest, over the groups with at least "
    "rebalance.min_group_size train rows (over all groups when fewer than two have). "
    "Label dependence: the largest |P(y|g) - P(y)| over classes, per group; over groups too in the headline "
    "(fairlearn MetricFrame.difference to overall). KL: KL(P(y|g) || P(y)) in nats. "
    "ESS: Kish effective sample size (sum w)^2 / sum w^2 per group; "
    "repeated rows add weight, not information."
)


def context(settings: RebalanceParams, result: Rebalanced) -> dict[str, object]:
    """What the rebalance templates show, but the charts and the grouping's name (the stage's)."""
    train = result.samples[result.samples.index.isin(training_rows(result.samples).index)]
    return {
        "how": how(settings),
        "too_small": ", ".join(result.too_small_names),
        "definitions": DEFINITIONS,
        "group_headers": GROUP_HEADERS,
        "cell_headers": CELL_HEADERS,
        "verdict": Verdict(warnings=verdict_warnings(settings, result)),
        "passed_through": result.passed_through,
        "n_train": result.n_train,
        "n_dropped": result.n_dropped,
        "n_test": int((result.samples["split"] == "test").sum()),
        "headline": headline(result, train),
        "group_rows": group_rows(result),
        "cell_rows": cell_rows(result),
        "empty_cells": ", ".join(result.empty_cells),
        "n_clipped": result.n_clipped,
        "copies": copies_summary(train["copies"]) if settings.method == "resample" else [],
    }


def how(settings: RebalanceParams) -> str:
    """How the weights were made: the strategy, the method and the too-small rule, in words."""
    return (
        HOW[settings.strategy]
        + (RESAMPLE_HOW if settings.method == "resample" else "")
        + TOO_SMALL_HOW.format(size=settings.min_group_size)
    )


def headline(result: Rebalanced, train: pd.DataFrame) -> list[tuple[str, float]]:
    """The headline figures, ``(name, value)``; ``train``: the output's train rows in play."""
    before, after = result.before, result.after
    used = train["weight"].to_numpy() * train["copies"].to_numpy()
    return [
        ("group share ratio before", result.share_ratio_before),
        ("group share ratio after", result.share_ratio_after),
        ("group share ratio after, all groups", after.share_ratio),
        ("label dependence before", before.dependence),
        ("label dependence after", after.dependence),
        ("min effective size", float(after.effective_size.min())),
        ("max weight", float(used.max())),
        ("min weight", float(used.min())),
    ]


def _too_small_warning(settings: RebalanceParams, result: Rebalanced) -> str:
    """The verdict line naming the groups too small to rebalance, with their train rows."""
    small = list(zip(result.too_small_names, result.train_sizes[result.too_small], strict=True))
    named = ", ".join(f"{group} ({size} rows)" for group, size in small[:MAX_NAMED_CELLS])
    more = f" and {len(small) - MAX_NAMED_CELLS} more" if len(small) > MAX_NAMED_CELLS else ""
    if (~result.too_small).sum() < 2:
        scope = (
            "fewer than two groups are large enough, so nothing is rebalanced "
            "and the group share ratio is over all groups"
        )
    else:
        scope = "they keep weight 1 and are left out of the group share ratio"
    return (
        f"{len(small)} group(s) too small to rebalance (fewer than rebalance.min_group_size = "
        f"{settings.min_group_size} train rows): {named}{more}; {scope}"
    )


def verdict_warnings(settings: RebalanceParams, result: Rebalanced) -> list[str]:
    """The verdict's warnings: one group only, groups too small, low effective sizes, empty
    cells, clipped weights."""
    lines = []
    if result.passed_through:
        lines.append(
            f"one group only ({result.before.groups[0]}) in rebalance.group_columns "
            f"{', '.join(settings.group_columns)}: data passed through unchanged"
        )
    elif result.too_small.any():
        lines.append(_too_small_warning(settings, result))
    # A group too small to rebalance is named above; its small size says the rest.
    for group, size, small in zip(
        result.after.groups, result.after.effective_size, result.too_small, strict=True
    ):
        # Equal weights give n_g up to rounding (29.999...): no warning for a group exactly at the bound.
        if size < settings.min_effective_size * (1 - 1e-9) and not small:
            lines.append(
                f"group {group}: effective sample size {size:.1f} is below "
                f"rebalance.min_effective_size {settings.min_effective_size:g}"
            )
    empty = result.empty_cells
    if empty:
        named = ", ".join(empty[:MAX_NAMED_CELLS]) + (
            f" and {len(empty) - MAX_NAMED_CELLS} more" if len(empty) > MAX_NAMED_CELLS else ""
        )
        lines.append(
            f"{len(empty)} empty group x label cell(s), which no weight can fill "
            f"(the label-group dependence stays): {named}"
        )
    if result.n_clipped and not result.passed_through:
        lines.append(
            f"{result.n_clipped} row weight(s) clipped at rebalance.max_weight {settings.max_weight:g}: "
            f"the target is only approached"
        )
    return lines


def group_rows(result: Rebalanced) -> list[list]:
    """Per group (``GROUP_HEADERS``): size, shares, mean weight, effective sizes, label
    dependence and KL, before and after."""
    before, after = result.before, result.after
    return [
        [
            group,
            int(result.train_sizes[g]),
            "too small: weight 1" if result.too_small[g] else "ok",
            before.share[g],
            after.share[g],
            after.share[g] * result.n_train / result.train_sizes[g],
            before.effective_size[g],
            after.effective_size[g],
            before.max_gap[g],
            after.max_gap[g],
            before.kl[g],
            after.kl[g],
        ]
        for g, group in enumerate(before.groups)
    ]


def cell_rows(result: Rebalanced) -> list[list]:
    """Per group x class cell (``CELL_HEADERS``): size, share and P(y|g), before and after."""
    before, after = result.before, result.after
    return [
        [
            group,
            name,
            int(result.cell_sizes[g, k]),
            before.cell_share[g, k],
            after.cell_share[g, k],
            before.label_given_group[g, k],
            after.label_given_group[g, k],
        ]
        for g, group in enumerate(before.groups)
        for k, name in enumerate(result.classes)
    ]


def copies_summary(copies: pd.Series) -> list[list]:
    """Resample: how many rows are left out, used once, or repeated; ``copies`` ``(n,)`` per train row."""
    return [
        ["left out (0 copies)", int((copies == 0).sum())],
        ["used once", int((copies == 1).sum())],
        ["repeated (2+ copies)", int((copies > 1).sum())],
        ["most copies of one row", int(copies.max())],
        ["rows drawn in all", int(copies.sum())],
    ]

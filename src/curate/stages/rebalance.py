"""rebalance: ``data/clean/samples.parquet`` -> ``data/balanced/samples.parquet`` + report.

Measures how the groups (``rebalance.group_columns``, intersected) and labels
are represented among the train rows in play, then rebalances them: method
``reweight`` writes a ``weight`` column (mean 1) for a weighted sampler or loss,
method ``resample`` a ``copies`` count per row (0 for an under-sampled row,
which stays in the table; the train stage expands rows by it). Rows dropped by
clean are left out; test rows pass through untouched (weight 1, copies 1).

A group with fewer than ``rebalance.min_group_size`` train rows is too small to rebalance:
brought to parity, a handful of rows would carry a whole group's weight (one image at weight
40), which is noise, not balance. Its rows keep weight 1 (copies 1), the strategy runs over
the other groups as if it were absent, and the group share ratio (the gated metric) is
measured over the groups large enough to rebalance (over all groups when fewer than two are:
the ratio of one group to itself would be 1 whatever the data); the report names the small
groups and also shows the ratio over all groups.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from curate.curation import balance
from curate.data.lineage import Lineage
from curate.data.paths import BALANCED_DIR, CLEAN_DIR
from curate.data.samples import class_names_of, read_samples, write_samples
from curate.data.splits import training_rows
from curate.errors import CurateError
from curate.params import Params, RebalanceParams, load_params
from curate.report import Verdict, bar_chart
from curate.report.writer import write_stage
from curate.stage import Gate, Stage, guarded, stage_parser

STAGE = Stage(
    "rebalance",
    metrics=("group_share_ratio_after",),
    gates={
        "min_group_share_ratio": Gate("group_share_ratio_after", "min"),
    },
)

INPUT = CLEAN_DIR / "samples.parquet"
OUTPUT = BALANCED_DIR / "samples.parquet"
# Joins the values of several group columns into one intersectional group name,
# the name target_shares uses: "mnist / indoor".
GROUP_SEPARATOR = " / "
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


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("rebalance", __doc__).parse_args(argv)
    params = load_params(args.params)
    lineage = Lineage()
    result = compute(read_samples(lineage.input(INPUT)), params.rebalance, params.seed)
    write_samples(lineage.output(OUTPUT), result.samples)
    sizes = write_stage(STAGE, params, metrics(result), report_context(params, result), lineage)
    print(
        f"rebalance: {result.n_train:,} train rows in {len(result.before.groups)} group(s), "
        f"share ratio {result.share_ratio_before:.3f} -> {result.share_ratio_after:.3f}; "
        f"reports/rebalance.html {sizes['html']:,} bytes"
    )
    return 0


@dataclass
class Rebalanced:
    samples: pd.DataFrame  # the output table: train rows in play + test rows, with weight and copies
    classes: list[str]  # (K,) class names by label
    before: balance.Representation
    after: balance.Representation
    train_sizes: np.ndarray  # (G,) train rows per group
    cell_sizes: np.ndarray  # (G, K) train rows per group x label cell
    n_dropped: int  # train rows the clean stage dropped
    n_clipped: int  # rows whose weight hit max_weight
    passed_through: bool  # one group only: nothing to rebalance
    too_small: np.ndarray  # (G,) bool: under rebalance.min_group_size train rows, kept at weight 1

    @property
    def n_train(self) -> int:
        return int(self.train_sizes.sum())

    @property
    def share_ratio_before(self) -> float:
        """The group share ratio over the groups large enough to rebalance (all when none is)."""
        return balance.share_ratio(self.before.share, ~self.too_small)

    @property
    def share_ratio_after(self) -> float:
        return balance.share_ratio(self.after.share, ~self.too_small)

    @property
    def too_small_names(self) -> list[str]:
        return [group for group, small in zip(self.before.groups, self.too_small, strict=True) if small]

    @property
    def empty_cells(self) -> list[str]:
        """Group x label cells with no train rows, for classes that do have train rows."""
        present = self.cell_sizes.sum(axis=0) > 0
        return [
            f"{group} x {name}"
            for g, group in enumerate(self.before.groups)
            for k, name in enumerate(self.classes)
            if present[k] and self.cell_sizes[g, k] == 0
        ]


def compute(samples: pd.DataFrame, settings: RebalanceParams, seed: int) -> Rebalanced:
    """Weights or copies for the train rows in play; raises :class:`CurateError` before any output."""
    train = training_rows(samples)
    if train.empty:
        raise CurateError(f"{INPUT}: no train rows in play (every train row is dropped or there are none)")
    out = samples[samples.index.isin(train.index) | (samples["split"] == "test")].copy()
    out["rebalance_group"] = group_of_row(out, settings.group_columns)
    keys = out.loc[train.index, "rebalance_group"]
    groups, group_names = pd.factorize(keys, sort=True)
    group_names = [str(name) for name in group_names]
    classes = class_names_of(samples)
    labels = train["label"].to_numpy()
    sizes = np.bincount(groups, minlength=len(group_names))
    too_small = sizes < settings.min_group_size
    weights, copies, n_clipped = group_weights(
        settings, groups, labels, group_names, len(classes), too_small, seed
    )
    out["weight"] = 1.0
    out["copies"] = np.int64(1)
    out.loc[train.index, "weight"] = weights
    out.loc[train.index, "copies"] = copies
    return Rebalanced(
        samples=out,
        classes=classes,
        before=balance.measure(keys, labels, np.ones(len(train)), len(classes)),
        after=balance.measure(keys, labels, weights * copies, len(classes)),
        train_sizes=sizes,
        cell_sizes=balance.cell_counts(groups, labels, len(group_names), len(classes)),
        n_dropped=int((samples["split"] == "train").sum() - len(train)),
        n_clipped=n_clipped,
        passed_through=len(group_names) == 1,
        too_small=too_small,
    )


def group_weights(
    settings: RebalanceParams,
    groups: np.ndarray,
    labels: np.ndarray,
    group_names: list[str],
    n_classes: int,
    too_small: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(weights, copies, n_clipped)`` for the train rows ``(n,)``, per strategy and method.

    The groups flagged ``too_small`` ``(G,)`` keep weight 1 and copies 1; the strategy, the
    cap and resampling act on the other rows only, as if those groups were absent, so the
    rebalanced weights have mean 1 among themselves (and all weights have mean 1).
    """
    shares = target_vector(settings, group_names)  # checked first, so a bad share fails even with one group
    weights, copies = np.ones(len(groups)), np.ones(len(groups), dtype=np.int64)
    kept = np.flatnonzero(~too_small)
    rows = ~too_small[groups]
    if settings.strategy == "none" or len(kept) < 2:
        return weights, copies, 0
    codes = np.searchsorted(kept, groups[rows])  # dense codes over the kept groups
    raw = strategy_weights(settings.strategy, codes, labels[rows], len(kept), n_classes, shares[kept])
    weights[rows] = balance.clip_weights(raw, settings.max_weight)
    n_clipped = int((raw / raw.mean() > settings.max_weight).sum())
    if settings.method == "resample":
        copies[rows] = balance.resample_counts(codes, labels[rows], weights[rows], n_classes, seed)
        weights[rows] = 1.0
    return weights, copies, n_clipped


def strategy_weights(
    strategy: str, groups: np.ndarray, labels: np.ndarray, n_groups: int, n_classes: int, shares: np.ndarray
) -> np.ndarray:
    """The unclipped weights ``(n,)`` of ``strategy`` (not none) over ``n_groups`` group codes;
    ``shares`` ``(G,)``, the target shares (rescaled here to sum to 1), for strategy target."""
    if strategy == "group":
        return balance.equal_group_weights(groups, n_groups)
    if strategy == "group_label":
        return balance.kamiran_calders_weights(groups, labels, n_groups, n_classes)
    return balance.target_share_weights(groups, shares / shares.sum())


def group_of_row(samples: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Each row's (intersectional) group name: the values of ``columns`` joined by :data:`GROUP_SEPARATOR`."""
    for column in columns:
        if column not in samples.columns:
            raise CurateError(
                f"rebalance.group_columns: column {column!r} is not in {INPUT} "
                f"(columns: {', '.join(map(str, samples.columns))})"
            )
        if samples[column].isna().any():
            raise CurateError(f"{INPUT}: column {column!r} has {samples[column].isna().sum()} missing values")
    parts = [samples[column].astype(str) for column in columns]
    return parts[0].str.cat(parts[1:], sep=GROUP_SEPARATOR) if len(parts) > 1 else parts[0]


def target_vector(settings: RebalanceParams, group_names: list[str]) -> np.ndarray:
    """``rebalance.target_shares`` as a ``(G,)`` array in group order; every group must have a share."""
    if settings.strategy != "target":
        return np.full(len(group_names), 1 / len(group_names))
    shares = settings.target_shares
    for group in shares:
        if group not in group_names:
            raise CurateError(
                f"rebalance.target_shares: group {group!r} has no train rows "
                f"(groups: {', '.join(group_names)})"
            )
    for group in group_names:
        if group not in shares:
            raise CurateError(f"rebalance.target_shares: train group {group!r} has no share")
    return np.array([shares[group] for group in group_names])


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


def _warnings(settings: RebalanceParams, result: Rebalanced) -> list[str]:
    warnings = []
    if result.passed_through:
        warnings.append(
            f"one group only ({result.before.groups[0]}) in rebalance.group_columns "
            f"{', '.join(settings.group_columns)}: data passed through unchanged"
        )
    elif result.too_small.any():
        warnings.append(_too_small_warning(settings, result))
    # A group too small to rebalance is named above; its small size says the rest.
    for group, size, small in zip(
        result.after.groups, result.after.effective_size, result.too_small, strict=True
    ):
        # Equal weights give n_g up to rounding (29.999...): no warning for a group exactly at the bound.
        if size < settings.min_effective_size * (1 - 1e-9) and not small:
            warnings.append(
                f"group {group}: effective sample size {size:.1f} is below "
                f"rebalance.min_effective_size {settings.min_effective_size:g}"
            )
    empty = result.empty_cells
    if empty:
        named = ", ".join(empty[:MAX_NAMED_CELLS]) + (
            f" and {len(empty) - MAX_NAMED_CELLS} more" if len(empty) > MAX_NAMED_CELLS else ""
        )
        warnings.append(
            f"{len(empty)} empty group x label cell(s), which no weight can fill "
            f"(the label-group dependence stays): {named}"
        )
    if result.n_clipped and not result.passed_through:
        warnings.append(
            f"{result.n_clipped} row weight(s) clipped at rebalance.max_weight {settings.max_weight:g}: "
            f"the target is only approached"
        )
    return warnings


def metrics(result: Rebalanced) -> dict[str, float]:
    return {
        "group_share_ratio_before": result.share_ratio_before,
        "group_share_ratio_after": result.share_ratio_after,
        "label_dependence_before": result.before.dependence,
        "label_dependence_after": result.after.dependence,
        "min_effective_size": float(result.after.effective_size.min()),
    }


def report_context(params: Params, result: Rebalanced) -> dict[str, object]:
    settings, before, after = params.rebalance, result.before, result.after
    train = result.samples[result.samples.index.isin(training_rows(result.samples).index)]
    used = train["weight"].to_numpy() * train["copies"].to_numpy()
    headline = [
        ("group share ratio before", result.share_ratio_before),
        ("group share ratio after", result.share_ratio_after),
        ("group share ratio after, all groups", after.share_ratio),
        ("label dependence before", before.dependence),
        ("label dependence after", after.dependence),
        ("min effective size", float(after.effective_size.min())),
        ("max weight", float(used.max())),
        ("min weight", float(used.min())),
    ]
    return {
        "settings": settings,
        "group_by": GROUP_SEPARATOR.join(settings.group_columns),
        "how": HOW[settings.strategy]
        + (RESAMPLE_HOW if settings.method == "resample" else "")
        + TOO_SMALL_HOW.format(size=settings.min_group_size),
        "too_small": ", ".join(result.too_small_names),
        "definitions": DEFINITIONS,
        "group_headers": GROUP_HEADERS,
        "cell_headers": CELL_HEADERS,
        "verdict": Verdict(warnings=_warnings(settings, result)),
        "passed_through": result.passed_through,
        "n_train": result.n_train,
        "n_dropped": result.n_dropped,
        "n_test": int((result.samples["split"] == "test").sum()),
        "headline": headline,
        "group_rows": _group_rows(result),
        "cell_rows": _cell_rows(result),
        "empty_cells": ", ".join(result.empty_cells),
        "n_clipped": result.n_clipped,
        "copies": _copies_summary(train["copies"]) if settings.method == "resample" else [],
        "charts": _charts(result),
    }


def _group_rows(result: Rebalanced) -> list[list]:
    """Per group: size, shares, mean weight, effective sizes, label dependence and KL, before and after."""
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


def _cell_rows(result: Rebalanced) -> list[list]:
    """Per group x class cell: size, share and P(y|g), before and after."""
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


def _copies_summary(copies: pd.Series) -> list[list]:
    """Resample: how many rows are left out, used once, or repeated."""
    return [
        ["left out (0 copies)", int((copies == 0).sum())],
        ["used once", int((copies == 1).sum())],
        ["repeated (2+ copies)", int((copies > 1).sum())],
        ["most copies of one row", int(copies.max())],
        ["rows drawn in all", int(copies.sum())],
    ]


def _charts(result: Rebalanced) -> list:
    before, after = result.before, result.after
    charts = [
        bar_chart(
            before.groups,
            {"before": before.share, "after": after.share},
            key="rebalance-groups",
            ylabel="share of train weight",
            title="Group shares",
        )
    ]
    for when, rep in (("before", before), ("after", after)):
        charts.append(
            bar_chart(
                result.classes,
                {group: rep.cell_share[g] for g, group in enumerate(rep.groups)},
                key=f"rebalance-cells-{when}",
                ylabel="share of train weight",
                title=f"Group x label shares {when} (stacked by group)",
                stacked=True,
            )
        )
    return charts


if __name__ == "__main__":
    sys.exit(guarded(main))

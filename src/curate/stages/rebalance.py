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

import numpy as np
import pandas as pd

from curate.curation import balance, balance_report
from curate.curation.balance import Rebalanced
from curate.data.lineage import Lineage
from curate.data.paths import BALANCED_DIR, CLEAN_DIR
from curate.data.samples import class_names_of, read_samples, write_samples
from curate.data.splits import training_rows
from curate.errors import CurateError
from curate.params import Params, RebalanceParams, load_params
from curate.report import bar_chart
from curate.report.writer import write_stage
from curate.stage import Gate, Stage, guarded, stage_parser

STAGE = Stage(
    "rebalance",
    metrics=("group_share_ratio_after",),
    view="data",
    glance=("group_share_ratio_after",),
    gates={
        "min_group_share_ratio": Gate("group_share_ratio_after", "min"),
    },
)

INPUT = CLEAN_DIR / "samples.parquet"
OUTPUT = BALANCED_DIR / "samples.parquet"
# Joins the values of several group columns into one intersectional group name,
# the name target_shares uses: "mnist / indoor".
GROUP_SEPARATOR = " / "


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
    out.loc[train.index, "weight"] = with_label_weights(weights, train)
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


def with_label_weights(weights: np.ndarray, train: pd.DataFrame) -> np.ndarray:
    """The group weights times clean's ``label_weight`` (``clean.action: weight``: the chance a
    flagged row's label is right), back to mean 1; as they are when clean wrote none."""
    if "label_weight" not in train.columns or (train["label_weight"] == 1).all():
        return weights
    product = weights * train["label_weight"].to_numpy(dtype=np.float64)
    return product / product.mean() if product.mean() > 0 else weights


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


def metrics(result: Rebalanced) -> dict[str, float]:
    return {
        "group_share_ratio_before": result.share_ratio_before,
        "group_share_ratio_after": result.share_ratio_after,
        "label_dependence_before": result.before.dependence,
        "label_dependence_after": result.after.dependence,
        "min_effective_size": float(result.after.effective_size.min()),
    }


def report_context(params: Params, result: Rebalanced) -> dict[str, object]:
    """What the rebalance templates show: the kit's tables and words, and the charts."""
    settings = params.rebalance
    return {
        "settings": settings,
        "group_by": GROUP_SEPARATOR.join(settings.group_columns),
        **balance_report.context(settings, result),
        "charts": _charts(result),
    }


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

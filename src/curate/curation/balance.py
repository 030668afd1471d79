"""Representation of groups and labels, and the weights or resample counts that rebalance them.

Small pure functions, numpy in and numpy out. Shapes use

* ``n``: train rows in play; ``G``: groups; ``K``: classes;
* ``groups``: int array ``(n,)`` of group codes in ``[0, G)``;
* ``labels``: int array ``(n,)`` of class codes in ``[0, K)``;
* ``weights``: float array ``(n,)``, non-negative.

Every group code in ``[0, G)`` is assumed to occur at least once (codes come from
``pd.factorize``); a group x label cell may be empty. Weights are only ever
computed for rows that exist, so an empty cell never divides by zero: it simply
gets no weight (and the label-group dependence of that group cannot be removed).

Measurement goes through fairlearn's :class:`~fairlearn.metrics.MetricFrame`:
fairlearn measures, but has no reweighing preprocessor, so the Kamiran-Calders
weights are the few lines of :func:`kamiran_calders_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


def cell_counts(groups: np.ndarray, labels: np.ndarray, n_groups: int, n_classes: int) -> np.ndarray:
    """Rows per group x label cell: int array ``(G, K)``."""
    cells = np.bincount(groups * n_classes + labels, minlength=n_groups * n_classes)
    return cells.reshape(n_groups, n_classes)


def equal_group_weights(groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Weights ``(n,)`` that give every group the same total, ``n / G``: ``w = n / (G * n_g)``."""
    sizes = np.bincount(groups, minlength=n_groups)
    return len(groups) / (n_groups * sizes[groups])


def target_share_weights(groups: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Weights ``(n,)`` giving group ``g`` the total ``n * shares[g]``; ``shares`` ``(G,)`` sums to 1."""
    sizes = np.bincount(groups, minlength=len(shares))
    return len(groups) * shares[groups] / sizes[groups]


def kamiran_calders_weights(
    groups: np.ndarray, labels: np.ndarray, n_groups: int, n_classes: int
) -> np.ndarray:
    """Kamiran-Calders reweighing, multiclass: ``w = P(g) P(y) / P(g, y)``, shape ``(n,)``.

    Under these weights every group's label distribution equals the overall one,
    so the label-group dependence is zero, and the group totals are unchanged.
    With counts: ``w = n_g * n_y / (n * n_gy)``; ``n_gy >= 1`` for every row's
    own cell, so empty cells are never divided by. If some cell is empty the
    weights sum to less than ``n`` (the missing cell's mass cannot be restored);
    :func:`clip_weights` renormalises them to mean 1.
    """
    counts = cell_counts(groups, labels, n_groups, n_classes)
    per_group, per_label = counts.sum(axis=1), counts.sum(axis=0)
    return per_group[groups] * per_label[labels] / (len(groups) * counts[groups, labels])


def clip_weights(weights: np.ndarray, max_weight: float) -> np.ndarray:
    """Normalise ``weights`` ``(n,)`` to mean 1 with no weight above ``max_weight`` (``>= 1``).

    Clipping then renormalising would push the clipped weights back above the
    cap, so solve it exactly instead: the result is ``min(c * w, max_weight)``
    with the one scale ``c`` that brings the mean back to 1 (water-filling over
    the weights in decreasing order). Unclipped weights keep their ratios.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.mean()
    if w.max() <= max_weight:
        return w
    if max_weight <= 1.0:
        return np.ones_like(w)
    n = len(w)
    descending = np.sort(w)[::-1]
    rest = np.cumsum(descending[::-1])[::-1]  # rest[k]: sum of all but the k largest
    clipped = np.arange(n)
    scale = (n - clipped * max_weight) / rest
    # The first k whose largest unclipped weight stays under the cap once scaled.
    fits = (clipped >= 1) & (scale > 0) & (scale * descending <= max_weight)
    return np.minimum(w * scale[np.argmax(fits)], max_weight)


def largest_remainder(mass: np.ndarray) -> np.ndarray:
    """Round non-negative ``mass`` ``(m,)`` to ints that sum to ``round(mass.sum())``.

    The leftover units go to the largest fractional parts, ties to the lowest index.
    """
    floor = np.floor(mass).astype(np.int64)
    leftover = int(round(mass.sum())) - int(floor.sum())
    order = np.argsort(-(mass - floor), kind="stable")
    floor[order[:leftover]] += 1
    return floor


def resample_counts(
    groups: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_classes: int, seed: int
) -> np.ndarray:
    """How many times to use each row, int array ``(n,)``, so cell sizes match the weighted ones.

    Each group x label cell ``c`` of ``n_c`` rows gets ``m_c`` draws, its total
    weight rounded (largest remainder, so the draws still sum to ``n``). Every
    row is used ``m_c // n_c`` times and ``m_c % n_c`` rows, chosen at random
    under ``seed``, once more: over-sampling repeats rows as evenly as possible,
    under-sampling leaves some rows at 0. Sampling within cells rather than whole
    groups keeps each group's label mix what the weights say it should be.
    """
    n = len(groups)
    cells = groups * n_classes + labels
    size = np.bincount(cells)
    draws = largest_remainder(np.bincount(cells, weights=weights))
    base = draws // np.maximum(size, 1)  # empty cells get no draws: their mass is 0
    extra = draws - base * size
    # A random rank within each cell: sort by (cell, random key), number the rows of each cell.
    order = np.lexsort((np.random.default_rng(seed).permutation(n), cells))
    starts = np.concatenate([[0], np.cumsum(size)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[cells[order]]
    return base[cells] + (rank < extra[cells])


def kish_ess(weights: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Kish effective sample size per group, ``(sum w)^2 / sum w^2``, float array ``(G,)``.

    ``n_g`` for equal weights, less when weights (or resample copies) vary within
    the group; 0 for a group whose weights are all 0.
    """
    total = np.bincount(groups, weights=weights, minlength=n_groups)
    squares = np.bincount(groups, weights=weights**2, minlength=n_groups)
    return np.divide(total**2, squares, out=np.zeros(n_groups), where=squares > 0)


def label_dependence(
    label_given_group: np.ndarray, label_overall: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """How far each group's label distribution is from the overall one.

    ``label_given_group`` ``(G, K)`` holds ``P(y | g)`` (rows sum to 1),
    ``label_overall`` ``(K,)`` holds ``P(y)``. Returns two ``(G,)`` arrays: the
    largest ``|P(y|g) - P(y)|`` over classes, and ``KL(P(y|g) || P(y))`` in nats
    (terms with ``P(y|g) = 0`` contribute 0; ``P(y) > 0`` wherever ``P(y|g) > 0``).
    """
    p, q = label_given_group, label_overall[None, :]
    max_gap = np.abs(p - q).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    # A group with no weight has no label distribution: NaN, not a perfect match.
    return max_gap, np.where(np.isnan(p).any(axis=1), np.nan, terms.sum(axis=1))


@dataclass(frozen=True)
class Representation:
    """Group and label representation of the train rows under some weights; arrays in group order."""

    groups: list[str]  # (G,) group names, sorted
    share: np.ndarray  # (G,) each group's share of the total weight
    label_given_group: np.ndarray  # (G, K) P(y | g)
    label_overall: np.ndarray  # (K,) P(y)
    max_gap: np.ndarray  # (G,) max over classes of |P(y|g) - P(y)|
    kl: np.ndarray  # (G,) KL(P(y|g) || P(y)), nats
    effective_size: np.ndarray  # (G,) Kish effective sample size
    share_ratio: float  # smallest group share / largest
    dependence: float  # max over groups and classes of |P(y|g) - P(y)|

    @property
    def cell_share(self) -> np.ndarray:
        """``(G, K)``: each group x label cell's share of the total weight, ``P(g, y)``."""
        return self.share[:, None] * self.label_given_group


def share_ratio(share: np.ndarray, among: np.ndarray) -> float:
    """Smallest share / largest over the groups where ``among`` ``(G,)`` is True: the ratio
    :func:`measure` gives, restricted to some groups. Over all groups when fewer than two are
    chosen: the ratio of one group to itself is 1 whatever the data, which says nothing."""
    chosen = share[among] if among.sum() >= 2 else share
    return float(chosen.min() / chosen.max()) if chosen.max() > 0 else float("nan")


@dataclass
class Rebalanced:
    """What the rebalance stage decided and measured: its output table and the representation
    of the train rows in play before (weight 1) and after (weight x copies)."""

    samples: pd.DataFrame  # the output table: train rows in play + test rows, with weight and copies
    classes: list[str]  # (K,) class names by label
    before: Representation
    after: Representation
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
        return share_ratio(self.before.share, ~self.too_small)

    @property
    def share_ratio_after(self) -> float:
        return share_ratio(self.after.share, ~self.too_small)

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


def measure(groups: pd.Series, labels: np.ndarray, weights: np.ndarray, n_classes: int) -> Representation:
    """Measure representation with a fairlearn MetricFrame over the group names ``groups`` ``(n,)``.

    The metrics are the total weight and, per class ``k``, the weighted share of
    label ``k``; ``by_group`` gives each group's share and ``P(y|g)``, ``overall``
    gives ``P(y)``, ``ratio()`` the share ratio and ``difference(to_overall)``
    the dependence. A group whose weights are all 0 has share 0 and ``P(y|g)``
    undefined (NaN), which the dependence then ignores.
    """
    weights = np.asarray(weights, dtype=np.float64)
    metrics = {"total": _total_weight, **{_class_key(k): _label_share(k) for k in range(n_classes)}}
    # fairlearn imports scikit-learn's metrics (slow, benchmarks/startup.py): paid when measuring,
    # not at every start.
    from fairlearn.metrics import MetricFrame

    frame = MetricFrame(
        metrics=metrics,
        y_true=np.asarray(labels),
        y_pred=np.asarray(labels),  # required by MetricFrame, unused by these metrics
        sensitive_features=groups.rename("group").reset_index(drop=True),
        sample_params={name: {"sample_weight": weights} for name in metrics},
    )
    by_group = frame.by_group
    group_names = [str(name) for name in by_group.index]
    class_keys = [_class_key(k) for k in range(n_classes)]
    label_given_group = by_group[class_keys].to_numpy(dtype=np.float64)
    label_overall = frame.overall[class_keys].to_numpy(dtype=np.float64)
    max_gap, kl = label_dependence(label_given_group, label_overall)
    codes = pd.Categorical(groups, categories=by_group.index).codes
    return Representation(
        groups=group_names,
        share=by_group["total"].to_numpy(dtype=np.float64) / weights.sum(),
        label_given_group=label_given_group,
        label_overall=label_overall,
        max_gap=max_gap,
        kl=kl,
        effective_size=kish_ess(weights, codes, len(group_names)),
        share_ratio=float(frame.ratio()["total"]),
        dependence=float(np.nanmax(frame.difference(method="to_overall")[class_keys])),
    )


def _class_key(k: int) -> str:
    return f"label_{k}"


def _total_weight(y_true: Sequence, y_pred: Sequence, sample_weight: np.ndarray) -> float:
    return float(np.sum(sample_weight))


def _label_share(k: int):
    def share(y_true: Sequence, y_pred: Sequence, sample_weight: np.ndarray) -> float:
        total = np.sum(sample_weight)
        return float(np.sum(sample_weight * (np.asarray(y_true) == k)) / total) if total > 0 else np.nan

    return share

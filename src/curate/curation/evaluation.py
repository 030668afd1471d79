"""Test-set metrics: overall, calibration, and by group with fairlearn.

Pure functions, numpy in and plain Python out (floats, lists, dicts keyed by class name or
group), ready for the evaluate stage's figures (``reports/metrics`` and ``reports/details``).
Labels are class indices ``0..K-1``; ``probs`` are N x K softmax rows; ``groups`` are the
sensitive feature, one string per row.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict:
    """Accuracy, macro F1 over all K classes, per-class precision and recall, the K x K confusion.

    ``confusion[i][j]``: test samples of class i predicted as j. A class never predicted has
    precision 0 (sklearn's ``zero_division=0``), a class absent from the test set recall 0.
    """
    labels = np.arange(len(names))
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "support": int(s)}
            for name, p, r, s in zip(names, precision, recall, support, strict=True)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def calibration_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> list[dict]:
    """Reliability table: per equal-width confidence bin ``((b-1)/M, b/M]``, count, accuracy, confidence.

    Confidence is the top softmax probability; accuracy whether the top class is the label.
    """
    confidence = probs.max(axis=1)
    hit = probs.argmax(axis=1) == y_true
    # ceil(c * M) - 1 puts c = b/M in bin b-1 (right-closed bins); c = 0 joins the first bin.
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        rows.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "count": count,
                "accuracy": float(hit[mask].mean()) if count else float("nan"),
                "confidence": float(confidence[mask].mean()) if count else float("nan"),
            }
        )
    return rows


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over bins of (bin share) x |accuracy - mean confidence|."""
    n = len(y_true)
    if n == 0:
        return float("nan")
    return float(
        sum(
            row["count"] / n * abs(row["accuracy"] - row["confidence"])
            for row in calibration_bins(y_true, probs, n_bins)
            if row["count"]
        )
    )


def _macro_recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # Over the classes present in this group's labels: a class a group has no samples of
    # has no recall, and counting it as 0 would punish the group for its composition.
    present = np.unique(y_true)
    if len(present) == 0:
        return float("nan")
    _, recall, _, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, zero_division=0)
    return float(recall.mean())


def group_metrics(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray) -> dict:
    """fairlearn ``MetricFrame`` of accuracy and macro recall by group, with its summaries.

    ``worst_group_accuracy`` = ``group_min()``, ``accuracy_gap`` = ``difference()`` (largest
    minus smallest), ``accuracy_ratio`` = ``ratio()`` (smallest over largest).
    """
    frame = MetricFrame(
        metrics={"accuracy": accuracy_score, "macro_recall": _macro_recall},
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=np.asarray(groups, dtype=object),
    )
    by_group = frame.by_group
    names, sizes = np.unique(np.asarray(groups, dtype=str), return_counts=True)
    counts = {str(g): int(n) for g, n in zip(names, sizes, strict=True)}
    return {
        "by_group": {
            str(group): {
                "accuracy": float(row["accuracy"]),
                "macro_recall": float(row["macro_recall"]),
                "n": counts[str(group)],
            }
            for group, row in sorted(by_group.iterrows(), key=lambda item: str(item[0]))
        },
        "worst_group_accuracy": float(frame.group_min()["accuracy"]),
        "accuracy_gap": float(frame.difference()["accuracy"]),
        "accuracy_ratio": float(frame.ratio()["accuracy"]),
    }


def one_vs_rest_fairness(
    y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, names: Sequence[str]
) -> dict:
    """fairlearn's demographic parity and equalized odds differences, one class against the rest.

    Both are defined for binary predictions, so for each class k they are computed on
    ``y_true == k`` and ``y_pred == k``: ``dp`` is the largest gap between groups in the rate of
    predicting k, ``eo`` the larger of the gaps in true- and false-positive rates for k.
    NaN where undefined (a group without positives or negatives of k).
    """
    groups = np.asarray(groups, dtype=object)
    per_class = {}
    for k, name in enumerate(names):
        truth, predicted = y_true == k, y_pred == k
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rates of empty slices: reported as NaN below
            dp = demographic_parity_difference(truth, predicted, sensitive_features=groups)
            eo = equalized_odds_difference(truth, predicted, sensitive_features=groups)
        per_class[name] = {"dp_diff_ovr": float(dp), "eo_diff_ovr": float(eo)}
    return {
        "per_class": per_class,
        "dp_diff_ovr_max": _nanmax([v["dp_diff_ovr"] for v in per_class.values()]),
        "eo_diff_ovr_max": _nanmax([v["eo_diff_ovr"] for v in per_class.values()]),
    }


def _nanmax(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return max(finite) if finite else float("nan")


def confidently_wrong(y_true: np.ndarray, probs: np.ndarray, count: int) -> np.ndarray:
    """Row indices of the ``count`` wrong predictions with the highest confidence, most confident first.

    Ties are broken by row order, so the choice is stable.
    """
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y_true)
    confidence = probs[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]

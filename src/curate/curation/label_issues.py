"""Label-issue detection as cleanlab intends it: out-of-sample predicted probabilities (from the
folds stage, :mod:`curate.learning.fold_training`), ``find_label_issues`` on them, then one action per
flagged sample.

The functions are pure, numpy/pandas in and numpy/pandas out; none needs torch. The clean stage
strings them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from cleanlab.count import get_confident_thresholds
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.metrics import cohen_kappa_score

from curate.curation.neighbours import DATALAB_K, Neighbours
from curate.curation.removal_cap import Hold, Sizing, cap_lines, removal_budgets


def fit_temperature(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of ``softmax(log_probs / T)``.

    ``log_probs`` are log-probabilities (logits up to a per-row constant, which softmax ignores);
    T is searched on a log scale within [0.05, 20].
    """
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        return float(-_log_softmax(log_probs / np.exp(log_t))[np.arange(len(labels)), labels].mean())

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def temperature_scaled(pred_probs: np.ndarray, labels: np.ndarray, fold_of_row: np.ndarray) -> np.ndarray:
    """``pred_probs`` with one temperature per fold, each fitted on that fold's held-out rows.

    Each fold's model is over- or under-confident in its own way (it saw other rows, stopped at
    another loss); one scalar per fold fitted on thousands of given labels cannot learn which
    rows are wrong, only how sharp that model's probabilities should be.
    """
    log_probs = np.log(np.clip(pred_probs.astype(np.float64), 1e-12, None))
    scaled = np.empty_like(log_probs)
    for fold in np.unique(fold_of_row):
        rows = fold_of_row == fold
        temperature = fit_temperature(log_probs[rows], labels[rows])
        scaled[rows] = np.exp(_log_softmax(log_probs[rows] / temperature))
    return scaled.astype(np.float32)


def knn_probs(neighbours: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Each row's share of given labels among its nearest other rows (``neighbours``: N x k, as
    :meth:`curate.curation.neighbours.Neighbours.rows` gives them), smoothed by one pseudo-count
    per class: the neighbourhood evidence Datalab's label check reads from features. A mislabelled
    row sits among rows of its true class."""
    n, k = neighbours.shape
    cells = np.repeat(np.arange(n) * n_classes, k) + labels[neighbours].ravel()
    counts = np.bincount(cells, minlength=n * n_classes).reshape(n, n_classes)
    return ((counts + 1.0) / (k + n_classes)).astype(np.float32)


@dataclass
class FoldOutputs:
    """What the folds stage wrote for clean, in the order of the train rows."""

    pred_probs: np.ndarray  # (N, K) out-of-sample predicted probabilities
    fold_of_row: np.ndarray  # (N,) the fold in which each row was held out
    embeddings: np.ndarray | None  # (N, D) the shared model's; None: no kNN evidence
    environment: list[tuple[str, object]]  # what computed them (torch, CPU kernels, threads)


def evidence(
    pred_probs: np.ndarray,
    labels: np.ndarray,
    fold_of_row: np.ndarray,
    neighbours: Neighbours | None,
    *,
    calibrate: str,
    knn_weight: float,
    knn_k: int,
) -> np.ndarray:
    """The probabilities cleanlab reads: the out-of-fold ``pred_probs``, temperature-scaled per
    fold when ``calibrate`` is ``temperature``, mixed with ``knn_weight`` of :func:`knn_probs` over
    the first ``knn_k`` neighbours of the embeddings' graph (none without ``neighbours``)."""
    probs = temperature_scaled(pred_probs, labels, fold_of_row) if calibrate == "temperature" else pred_probs
    if knn_weight > 0 and neighbours is not None:
        nearby = knn_probs(neighbours.rows(knn_k), labels, pred_probs.shape[1])
        probs = (1 - knn_weight) * probs + knn_weight * nearby
    return np.asarray(probs, dtype=np.float32)


PER_GROUP_MIN_ROWS = 50  # fewer rows than this: too few to estimate a group's own thresholds


def find_issues(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    filter_by: str,
    frac_noise: float,
    min_examples_per_class: int,
    rank_by: str,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(is_label_issue, label_quality)`` from cleanlab; quality is in [0, 1], low is suspicious.

    With ``groups``, each group of at least :data:`PER_GROUP_MIN_ROWS` rows is judged on its own:
    confident learning's per-class thresholds and noise counts are estimated from that group's
    rows alone. Pooled, the big group sets them, and a small group, of which the fold models saw
    few examples and are less sure, keeps its flips under them (recall 0.64 against 0.91 on the
    demo's class-conditional noise; 0.91 and 0.93 per group). Smaller groups stay pooled.
    """
    options = {"filter_by": filter_by, "frac_noise": frac_noise, "n_jobs": 1}
    options["min_examples_per_class"] = min_examples_per_class
    is_issue = np.asarray(find_label_issues(labels, pred_probs, **options), dtype=bool)
    for group in [] if groups is None else np.unique(groups):
        rows = groups == group
        if rows.sum() >= PER_GROUP_MIN_ROWS:
            is_issue[rows] = find_label_issues(labels[rows], pred_probs[rows], **options)
    quality = get_label_quality_scores(labels, pred_probs, method=rank_by)
    return is_issue, np.asarray(quality, dtype=np.float64)


def flag_columns(
    train: pd.DataFrame,
    is_issue: np.ndarray,
    quality: np.ndarray,
    predictions: FoldOutputs,
    checks: pd.DataFrame,
) -> pd.DataFrame:
    """The train rows with cleanlab's verdict, the fold model's prediction and the columns of
    ``checks`` (:func:`duplicates_and_outliers`); ``train`` gains them in place."""
    pred_probs = predictions.pred_probs
    train["given_label"] = train["label"].to_numpy()
    train["label_quality"] = quality
    train["is_label_issue"] = is_issue
    train["predicted_label"] = pred_probs.argmax(axis=1)
    train["predicted_confidence"] = pred_probs.max(axis=1).astype(np.float64)
    train["fold"] = predictions.fold_of_row
    train["pred_row"] = np.arange(len(train))
    for column in checks.columns:
        train[column] = checks[column].to_numpy()
    return train


def relabel_floors(pred_probs: np.ndarray, labels: np.ndarray, min_confidence: float | str) -> np.ndarray:
    """The probability each train row's predicted class must reach for ``clean.action`` relabel
    to move the row to it: ``min_confidence`` itself, or with ``auto`` confident learning's
    threshold for that class (cleanlab's ``get_confident_thresholds``: the mean probability the
    fold models give the class on the rows labelled with it). An absolute 0.9 never fires when
    the noise is high: fold models trained on 50% uniform noise give their argmax about 0.48,
    yet it is the true label for 94% of the train rows; their thresholds are then about 0.27, and
    the flagged rows over them (92%) are relabelled 95-97% right (README "When curation pays").
    """
    predicted = pred_probs.argmax(axis=1)
    if min_confidence != "auto":
        return np.full(len(predicted), float(min_confidence))
    thresholds = get_confident_thresholds(labels, pred_probs)
    return np.asarray(thresholds, dtype=np.float64)[predicted]


def fold_skill(predicted: np.ndarray, labels: np.ndarray) -> float:
    """How far the fold models' out-of-sample predictions agree with the given labels beyond
    chance: Cohen's kappa, 1 for full agreement, 0 for chance. Noise lowers it (a perfect model on
    50% uniform noise over 10 classes scores about 0.44), and so do fold models that learnt
    nothing (the tiny profile's 2-epoch folds: 0.02): under ``clean.min_fold_skill`` their flags
    are no evidence to act on."""
    if len(np.unique(labels)) < 2:
        return 1.0  # one class: nothing to disagree about
    return float(cohen_kappa_score(labels, predicted))


@dataclass(frozen=True)
class Decision:
    """What clean decided for each train row, and, for each row the removal cap held back, why."""

    actions: pd.Series  # on the train index: none | keep | drop | relabel
    holds: Mapping[object, Hold]  # train index -> the budgets that held the row back, as sized
    sizing: Sizing  # how every budget was sized: the params and the rate the decision used

    @property
    def notes(self) -> list[str]:
        """Where the cap bound, per class and group (:func:`curate.curation.removal_cap.cap_lines`)."""
        return cap_lines(self.holds)


def decide_actions(
    train: pd.DataFrame,
    *,
    action: str,
    relabel_floor: float | np.ndarray,
    max_drop_fraction: float,
    cap: str = "relative",
    min_rows: int = 1,
) -> Decision:
    """One action per train row: ``none`` | ``keep`` | ``drop`` | ``relabel``; and why the cap held
    rows back.

    ``train`` needs ``is_label_issue``, ``label_quality``, ``predicted_label``,
    ``predicted_confidence``, ``label``, ``group`` and ``drop_candidate`` (a removal asked for by
    something other than the label check, e.g. a near-duplicate). With ``action`` relabel a
    flagged row whose ``predicted_confidence`` reaches ``relabel_floor`` (one for all rows or one
    per row: :func:`relabel_floors`) asks to move to its predicted class, any other asks to go.
    Requests are granted most suspicious first while every class and group stays within its
    budget (:func:`curate.curation.removal_cap.removal_budgets`, sized from the share of rows
    asked to be dropped): a drop spends one row of its class and of its group; a relabel one of
    the class it leaves and gives one to the class it joins (its group keeps the row). The rest
    are kept and flagged, each with its :class:`~curate.curation.removal_cap.Hold`: the budgets
    that were spent when its turn came, as sized.
    """
    flagged = train["is_label_issue"].to_numpy()
    actions = np.where(flagged, "keep", "none").astype(object)
    wants_relabel = np.zeros(len(train), dtype=bool)
    if action == "relabel":
        wants_relabel = flagged & (train["predicted_confidence"].to_numpy() >= relabel_floor)
    wants_drop = ((flagged & (action != "keep")) | train["drop_candidate"].to_numpy()) & ~wants_relabel
    asked = np.flatnonzero(wants_drop | wants_relabel)
    sizing = Sizing(cap, max_drop_fraction, float(wants_drop.mean()) if len(train) else 0.0, min_rows)
    budgets = removal_budgets(train, sizing)
    left = {key: budget.size for key, budget in budgets.items()}
    given_back: dict[tuple[str, object], int] = {}
    holds: dict[object, Hold] = {}
    # Row by row, as budgets run out, on plain arrays: pandas lookups took 2.6 s for 11,000 requests.
    labels, groups, predicted = (train[column].to_numpy() for column in ("label", "group", "predicted_label"))
    for row in asked[np.argsort(train["label_quality"].to_numpy()[asked], kind="stable")]:
        relabel = wants_relabel[row]
        keys = [("label", labels[row])] + ([] if relabel else [("group", groups[row])])
        if all(left[key] > 0 for key in keys):
            for key in keys:
                left[key] -= 1
            if relabel:
                joined = ("label", predicted[row])
                left[joined] = left.get(joined, 0) + 1
                given_back[joined] = given_back.get(joined, 0) + 1
            actions[row] = "relabel" if relabel else "drop"
        else:
            actions[row] = "keep"
            spent = tuple(
                replace(budgets[key], given_back=given_back.get(key, 0)) for key in keys if left[key] == 0
            )
            holds[train.index[row]] = Hold("relabel" if relabel else "drop", spent, sizing)
    return Decision(pd.Series(actions, index=train.index, dtype=object), holds, sizing)


def detection_scores(flagged: np.ndarray, truly_noisy: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of ``flagged`` against the known flips (NaN where undefined)."""
    hits = int((flagged & truly_noisy).sum())
    precision = hits / flagged.sum() if flagged.sum() else float("nan")
    recall = hits / truly_noisy.sum() if truly_noisy.sum() else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def duplicates_and_outliers(neighbours: Neighbours) -> pd.DataFrame:
    """Near-duplicates and outliers from cleanlab's Datalab on the kNN graph of the shared model's
    embeddings (its first :data:`~curate.curation.neighbours.DATALAB_K` neighbours, in the
    metric Datalab would have chosen for them).

    Returns one row per sample: ``is_near_duplicate``, ``duplicate_set`` (an id shared
    by the members of one near-duplicate set, -1 when none), ``is_outlier``,
    ``outlier_score`` (low is unusual).
    """
    from cleanlab import Datalab

    # No labels: neither check reads them, and Datalab reads a label column row by row through
    # its Hugging Face dataset (4 s at 96,000 rows).
    lab = Datalab(data={"row": np.arange(neighbours.graph.shape[0])}, verbosity=0)
    # The metric named, so that the outlier check corrects its scores' float error as it does
    # when it searches the features itself.
    check = {"metric": neighbours.metric}
    graph = neighbours.first(DATALAB_K)
    lab.find_issues(knn_graph=graph, issue_types={"near_duplicate": check, "outlier": check})
    duplicates = lab.get_issues("near_duplicate")
    outliers = lab.get_issues("outlier")
    return pd.DataFrame(
        {
            "is_near_duplicate": duplicates["is_near_duplicate_issue"].to_numpy(dtype=bool),
            "duplicate_set": _set_ids(duplicates["near_duplicate_sets"].tolist()),
            "is_outlier": outliers["is_outlier_issue"].to_numpy(dtype=bool),
            "outlier_score": outliers["outlier_score"].to_numpy(dtype=np.float64),
        }
    )


def _set_ids(neighbours: list) -> np.ndarray:
    """Connected components of Datalab's per-row near-duplicate lists; id = smallest member, -1
    for a row in no set."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(neighbours)
    sizes = np.fromiter((len(others) for others in neighbours), dtype=np.int64, count=n)
    if not sizes.any():
        return np.full(n, -1)
    targets = np.concatenate([np.asarray(others, dtype=np.int64) for others in neighbours])
    links = csr_matrix(
        (np.ones(len(targets), dtype=np.int8), (np.repeat(np.arange(n), sizes), targets)), (n, n)
    )
    _, component = connected_components(links, directed=False)
    _, smallest = np.unique(component, return_index=True)  # each component's first row
    return np.where(sizes > 0, smallest[component], -1)


def duplicate_extras(duplicate_set: np.ndarray, label_quality: np.ndarray) -> np.ndarray:
    """Mask of all but one member of each near-duplicate set: the best-labelled one stays (the
    first row of the set among equals)."""
    members = np.flatnonzero(duplicate_set >= 0)
    ranked = members[np.lexsort((members, -label_quality[members], duplicate_set[members]))]
    sets = duplicate_set[ranked]
    extras = np.zeros(len(duplicate_set), dtype=bool)
    extras[ranked[1:][sets[1:] == sets[:-1]]] = True  # a set's first, its keeper, stays
    return extras

"""Label-issue detection as cleanlab intends it: out-of-sample predicted probabilities
from K-fold CNNs, ``find_label_issues`` on them, then one action per flagged sample.

The functions are pure, numpy/pandas in and numpy/pandas out, except
:func:`out_of_sample_predictions`, which trains the K fold CNNs (seeded: on the CPU the same
inputs give the same bytes; it reseeds torch's global generator). It alone needs torch and
imports it itself, so importing this module does not load torch. The clean stage strings
the functions together.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.model_selection import StratifiedKFold

from curate.errors import CurateError

if TYPE_CHECKING:
    import torch


@dataclass
class FoldPredictions:
    pred_probs: np.ndarray  # N x K float32, row i predicted by the model that never saw i
    folds: np.ndarray  # N int, the fold in which row i was held out
    embeddings: np.ndarray  # N x D float32, all rows embedded by one shared model (fold 0's)
    embedder: torch.nn.Module  # that shared model


def check_class_sizes(labels: np.ndarray, names: list[str], folds: int) -> None:
    """Stratified K-fold needs ``folds`` samples of each class: name the first class short of that."""
    counts = np.bincount(labels, minlength=len(names))
    for index in np.flatnonzero(counts < folds):
        raise CurateError(
            f"clean.folds: class {names[index]!r} has {counts[index]} train sample(s), fewer than "
            f"clean.folds = {folds}; add samples of that class or lower clean.folds"
        )


@dataclass(frozen=True)
class FoldTraining:
    """How each fold model is trained (the ``clean`` params as the fold loop needs them)."""

    n_classes: int
    model_name: str
    epochs: int
    batch_size: int
    lr: float
    seed: int
    polarity: str


def fold_splits(strata: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit_rows, held_out)`` per fold, stratified by ``strata`` (group x label), so a small group
    is spread over every fold instead of landing in one, where its model would never have seen it."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Small group x label strata trigger "least populated class" warnings; classes were checked.
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(np.zeros(len(strata)), strata))


def fold_model(
    images: np.ndarray,
    labels: np.ndarray,
    fit_rows: np.ndarray,
    held_out: np.ndarray,
    fold: int,
    training: FoldTraining,
    device: torch.device,
    progress: str | None = None,
) -> tuple[torch.nn.Module, np.ndarray]:
    """Fold ``fold``'s model, trained on ``fit_rows``, and its probabilities for ``held_out``.

    Seeded by the fold alone, so a fold gives the same model whichever process trains it.
    """
    import torch  # only here: the rest of this module is used without torch

    from curate import model as models

    channels, size = images.shape[3], images.shape[1]
    fold_seed = training.seed * 1000 + fold
    torch.manual_seed(fold_seed)  # weight init
    net = models.build_model(training.model_name, training.n_classes, channels, size)
    config = models.FitConfig(
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        seed=fold_seed,
        device=device,
        polarity=training.polarity,
    )
    models.fit(net, images[fit_rows], labels[fit_rows], config, progress=progress)
    probs, _ = models.predict(
        net, images[held_out], batch_size=1024, device=device, polarity=training.polarity
    )
    return net, probs


def out_of_sample_predictions(
    images: np.ndarray,
    labels: np.ndarray,
    strata: np.ndarray,
    *,
    folds: int,
    training: FoldTraining,
    device: torch.device,
) -> FoldPredictions:
    """Train one CNN per fold on the other folds and predict the held-out fold (:func:`fold_model`);
    fold 0's model embeds every row. ``strata``: see :func:`fold_splits`."""
    from curate import model as models

    pred_probs = np.zeros((len(labels), training.n_classes), dtype=np.float32)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    embedder = None
    for fold, (fit_rows, held_out) in enumerate(fold_splits(strata, folds, training.seed)):
        progress = f"clean: fold {fold + 1}/{folds}"
        net, probs = fold_model(images, labels, fit_rows, held_out, fold, training, device, progress)
        pred_probs[held_out] = probs
        fold_of[held_out] = fold
        if embedder is None:
            embedder = net
    _, embeddings = models.predict(
        embedder, images, batch_size=1024, device=device, polarity=training.polarity
    )
    return FoldPredictions(pred_probs, fold_of, embeddings, embedder)


def find_issues(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    filter_by: str,
    frac_noise: float,
    min_examples_per_class: int,
    rank_by: str,
) -> tuple[np.ndarray, np.ndarray]:
    """``(is_label_issue, label_quality)`` from cleanlab; quality is in [0, 1], low is suspicious."""
    is_issue = find_label_issues(
        labels,
        pred_probs,
        filter_by=filter_by,
        frac_noise=frac_noise,
        min_examples_per_class=min_examples_per_class,
        n_jobs=1,
    )
    quality = get_label_quality_scores(labels, pred_probs, method=rank_by)
    return np.asarray(is_issue, dtype=bool), np.asarray(quality, dtype=np.float64)


def decide_actions(
    train: pd.DataFrame,
    *,
    action: str,
    relabel_min_confidence: float,
    max_drop_fraction: float,
) -> tuple[pd.Series, list[str]]:
    """One action per train row: ``none`` | ``keep`` | ``drop`` | ``relabel``; and where the cap bound.

    ``train`` needs ``is_label_issue``, ``label_quality``, ``predicted_confidence``,
    ``label``, ``group`` and ``drop_candidate`` (a removal asked for by something
    other than the label check, e.g. a near-duplicate). Removals are granted most
    suspicious first while every class and group stays within
    ``max_drop_fraction`` of its train rows; the rest are kept and flagged.
    """
    actions = pd.Series("none", index=train.index, dtype=object)
    flagged = train["is_label_issue"].to_numpy()
    actions[flagged] = "keep"
    if action == "relabel":
        confident = flagged & (train["predicted_confidence"].to_numpy() >= relabel_min_confidence)
        actions[confident] = "relabel"
    wants_drop = (flagged & (action != "keep")) | train["drop_candidate"].to_numpy()
    wants_drop &= (actions != "relabel").to_numpy()

    budgets = {
        (kind, key): int(np.floor(max_drop_fraction * count))
        for kind in ("label", "group")
        for key, count in train[kind].value_counts().items()
    }
    bound: dict[tuple[str, object], int] = {}
    for index in train.index[wants_drop][np.argsort(train["label_quality"][wants_drop], kind="stable")]:
        keys = [("label", train.at[index, "label"]), ("group", train.at[index, "group"])]
        if all(budgets[key] > 0 for key in keys):
            for key in keys:
                budgets[key] -= 1
            actions[index] = "drop"
        else:
            actions[index] = "keep"
            for key in keys:
                if budgets[key] == 0:
                    bound[key] = bound.get(key, 0) + 1
    notes = [f"{kind} {key}: {n} removal(s) held back" for (kind, key), n in sorted(bound.items(), key=str)]
    return actions, notes


def detection_scores(flagged: np.ndarray, truly_noisy: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of ``flagged`` against the known flips (NaN where undefined)."""
    hits = int((flagged & truly_noisy).sum())
    precision = hits / flagged.sum() if flagged.sum() else float("nan")
    recall = hits / truly_noisy.sum() if truly_noisy.sum() else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def duplicates_and_outliers(embeddings: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Near-duplicates and outliers from cleanlab's Datalab on the shared model's embeddings.

    Returns one row per sample: ``is_near_duplicate``, ``duplicate_set`` (an id shared
    by the members of one near-duplicate set, -1 when none), ``is_outlier``,
    ``outlier_score`` (low is unusual).
    """
    from cleanlab import Datalab

    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(features=embeddings, issue_types={"near_duplicate": {}, "outlier": {}})
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
    """Connected components of Datalab's per-row near-duplicate lists; id = smallest member."""
    parent = list(range(len(neighbours)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, others in enumerate(neighbours):
        for j in others:
            a, b = root(i), root(int(j))
            parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(len(neighbours))])
    in_set = np.array([len(others) > 0 for others in neighbours])
    return np.where(in_set, roots, -1)


def duplicate_extras(duplicate_set: np.ndarray, label_quality: np.ndarray) -> np.ndarray:
    """Mask of all but one member of each near-duplicate set: the best-labelled one stays."""
    extras = np.zeros(len(duplicate_set), dtype=bool)
    for set_id in np.unique(duplicate_set[duplicate_set >= 0]):
        members = np.flatnonzero(duplicate_set == set_id)
        keeper = members[np.argmax(label_quality[members])]
        extras[members[members != keeper]] = True
    return extras

"""Label-issue detection as cleanlab intends it: out-of-sample predicted probabilities
from K-fold CNNs, ``find_label_issues`` on them, then one action per flagged sample.

The functions are pure, numpy/pandas in and numpy/pandas out, except
:func:`out_of_sample_predictions`, which trains the K fold CNNs (seeded: on the CPU the same
inputs give the same bytes; it reseeds torch's global generator). It alone needs torch and
imports it itself, so importing this module does not load torch. The clean stage strings
the functions together.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.model_selection import StratifiedKFold

from curate.errors import CurateError
from curate.removal_cap import removal_budgets

if TYPE_CHECKING:
    import torch

    from curate.backbones import Backbone


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
    backbone: Backbone  # the network each fold model is, and how it starts (clean.model, weights, ...)
    epochs: int
    batch_size: int
    lr: float
    seed: int
    polarity: str
    augment: bool = True  # online shift/rotate/scale while training (FitConfig.augment)
    ensemble: int = 1  # models per fold, each seeded apart, their probabilities averaged
    # At least this many optimiser steps per fold model: on a few hundred photos ``epochs`` passes
    # are a few dozen steps, too few to learn the classes (see fold_epochs).
    min_steps: int = 0


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
    nets, probs = [], []
    for member in range(training.ensemble):
        # Member 0 keeps the seed a single model has always had; the others are seeded apart.
        member_seed = training.seed * 1000 + fold + 100_000 * member
        torch.manual_seed(member_seed)  # weight init
        net = training.backbone.initial_model(training.n_classes, channels, size)
        config = models.FitConfig(
            epochs=fold_epochs(len(fit_rows), training),
            batch_size=training.batch_size,
            lr=training.lr,
            seed=member_seed,
            device=device,
            polarity=training.polarity,
            augment=training.augment,
        )
        models.fit(net, images[fit_rows], labels[fit_rows], config, progress=progress)
        member_probs, _ = models.predict(
            net, images[held_out], batch_size=1024, device=device, polarity=training.polarity
        )
        nets.append(net)
        probs.append(member_probs)
    # The ensemble's mean probability: averaging seeds tempers each model's overconfident errors.
    return nets[0], np.mean(probs, axis=0, dtype=np.float64).astype(np.float32)


def fold_epochs(n_rows: int, training: FoldTraining) -> int:
    """``training.epochs``, raised so that a fold model of ``n_rows`` makes ``training.min_steps``
    optimiser steps: the demo's folds (3,109 rows, 25 steps an epoch) keep their 12 epochs (300
    steps), a folder of 960 photos (8 steps an epoch) gets 25 with ``min_steps`` 200."""
    steps_per_epoch = math.ceil(n_rows / training.batch_size)
    return max(training.epochs, math.ceil(training.min_steps / max(steps_per_epoch, 1)))


def out_of_sample_predictions(
    images: np.ndarray,
    labels: np.ndarray,
    strata: np.ndarray,
    *,
    folds: int,
    training: FoldTraining,
    device: torch.device,
) -> FoldPredictions | None:
    """Train one CNN per fold on the other folds and predict the held-out fold (:func:`fold_model`);
    fold 0's model embeds every row. ``strata``: see :func:`fold_splits`. ``images``: an array or
    a :class:`curate.dataset.ImageRows` (each fold reads its rows from it).

    Under torchrun with several processes (``clean.nproc``), the folds are spread over the ranks
    (fold f on rank f % world, each on its own GPU on CUDA) and rank 0 gathers the held-out
    probabilities and returns the whole; the other ranks return None. Each fold is seeded by the
    fold alone, so the result is the one a single process computes.
    """
    from curate import distributed
    from curate import model as models

    with distributed.process_group(device.type) as ranks:
        device = distributed.rank_device(device, ranks, "clean.nproc")
        mine: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        embedder = None
        for fold, (fit_rows, held_out) in enumerate(fold_splits(strata, folds, training.seed)):
            if fold % ranks.world != ranks.rank:
                continue
            progress = f"clean: fold {fold + 1}/{folds}" if ranks.main else None
            net, probs = fold_model(images, labels, fit_rows, held_out, fold, training, device, progress)
            mine[fold] = (held_out, probs)
            if fold == 0:
                embedder = net
        gathered = distributed.gather_to_main(mine)
    if gathered is None:
        return None
    pred_probs = np.zeros((len(labels), training.n_classes), dtype=np.float32)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    for fold, (held_out, probs) in sorted(item for share in gathered for item in share.items()):
        pred_probs[held_out] = probs
        fold_of[held_out] = fold
    _, embeddings = models.predict(
        embedder, images, batch_size=1024, device=device, polarity=training.polarity
    )
    return FoldPredictions(pred_probs, fold_of, embeddings, embedder)


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


def temperature_scaled(pred_probs: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """``pred_probs`` with one temperature per fold, each fitted on that fold's held-out rows.

    Each fold's model is over- or under-confident in its own way (it saw other rows, stopped at
    another loss); one scalar per fold fitted on thousands of given labels cannot learn which
    rows are wrong, only how sharp that model's probabilities should be.
    """
    log_probs = np.log(np.clip(pred_probs.astype(np.float64), 1e-12, None))
    scaled = np.empty_like(log_probs)
    for fold in np.unique(folds):
        rows = folds == fold
        temperature = fit_temperature(log_probs[rows], labels[rows])
        scaled[rows] = np.exp(_log_softmax(log_probs[rows] / temperature))
    return scaled.astype(np.float32)


def knn_probs(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """Each row's share of given labels among its ``k`` nearest other rows (cosine), smoothed by
    one pseudo-count per class: the neighbourhood evidence Datalab's label check reads from
    features. A mislabelled row sits among rows of its true class."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(labels) - 1)
    unit = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
    _, index = NearestNeighbors(n_neighbors=k + 1).fit(unit).kneighbors(unit)
    neighbours = np.array([row[row != i][:k] for i, row in enumerate(index)])  # drop the row itself
    counts = np.zeros((len(labels), n_classes))
    np.add.at(counts, (np.repeat(np.arange(len(labels)), k), labels[neighbours].ravel()), 1.0)
    return ((counts + 1.0) / (k + n_classes)).astype(np.float32)


def evidence(
    pred_probs: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    embeddings: np.ndarray | None,
    *,
    calibrate: str,
    knn_weight: float,
    knn_k: int,
) -> np.ndarray:
    """The probabilities cleanlab reads: the out-of-fold ``pred_probs``, temperature-scaled per
    fold when ``calibrate`` is ``temperature``, mixed with ``knn_weight`` of :func:`knn_probs`
    (none without ``embeddings``)."""
    probs = temperature_scaled(pred_probs, labels, folds) if calibrate == "temperature" else pred_probs
    if knn_weight > 0 and embeddings is not None:
        neighbours = knn_probs(embeddings, labels, pred_probs.shape[1], knn_k)
        probs = (1 - knn_weight) * probs + knn_weight * neighbours
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


def decide_actions(
    train: pd.DataFrame,
    *,
    action: str,
    relabel_min_confidence: float,
    max_drop_fraction: float,
    cap: str = "relative",
    min_rows: int = 1,
) -> tuple[pd.Series, list[str]]:
    """One action per train row: ``none`` | ``keep`` | ``drop`` | ``relabel``; and where the cap bound.

    ``train`` needs ``is_label_issue``, ``label_quality``, ``predicted_confidence``,
    ``label``, ``group`` and ``drop_candidate`` (a removal asked for by something
    other than the label check, e.g. a near-duplicate). Removals are granted most
    suspicious first while every class and group stays within its budget
    (:func:`curate.removal_cap.removal_budgets`); the rest are kept and flagged.
    """
    actions = pd.Series("none", index=train.index, dtype=object)
    flagged = train["is_label_issue"].to_numpy()
    actions[flagged] = "keep"
    if action == "relabel":
        confident = flagged & (train["predicted_confidence"].to_numpy() >= relabel_min_confidence)
        actions[confident] = "relabel"
    wants_drop = (flagged & (action != "keep")) | train["drop_candidate"].to_numpy()
    wants_drop &= (actions != "relabel").to_numpy()

    budgets = removal_budgets(
        train,
        float(wants_drop.mean()) if len(train) else 0.0,
        max_drop_fraction=max_drop_fraction,
        cap=cap,
        min_rows=min_rows,
    )
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


def embedding_predictions(
    images: np.ndarray,
    labels: np.ndarray,
    strata: np.ndarray,
    *,
    net: torch.nn.Module,
    folds: int,
    seed: int,
    polarity: str,
    device: torch.device,
    batch_size: int,
) -> FoldPredictions:
    """``clean.method: embeddings``, cleanlab's cheap path: every row embedded once by the frozen
    ``net`` (:func:`embed_rows`), then a logistic regression per fold (:func:`fold_splits`, as the
    K-fold CNNs use) on the other folds' embeddings predicts the held-out fold.

    The features are standardised inside each fold (the scaler sees only that fold's fit rows).
    The returned embedder is ``net`` with its head set to the regression fitted on every row
    (:func:`_set_head`), so the checkpoint classifies as the fold models do.
    """
    from sklearn.model_selection import cross_val_predict

    embeddings = embed_rows(net, images, polarity=polarity, device=device, batch_size=batch_size)
    splits = fold_splits(strata, folds, seed)
    pred_probs = cross_val_predict(
        _probe(seed), embeddings, labels, cv=splits, method="predict_proba"
    ).astype(np.float32)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    for fold, (_, held_out) in enumerate(splits):
        fold_of[held_out] = fold
    _set_head(net, _probe(seed).fit(embeddings, labels), int(pred_probs.shape[1]))
    return FoldPredictions(pred_probs, fold_of, embeddings, net)


def _probe(seed: int) -> object:
    """The linear probe: standardised features, multinomial logistic regression (lbfgs, L2, C=1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


def embed_rows(
    net: torch.nn.Module, images: np.ndarray, *, polarity: str, device: torch.device, batch_size: int
) -> np.ndarray:
    """``net.embed`` of every image, float32 N x D: eval mode, no gradients, batches of
    ``batch_size`` converted on the device as :func:`curate.model.to_tensor` does (bf16 on CUDA)."""
    import torch
    from tqdm.auto import tqdm

    from curate.model import to_tensor

    net.to(device).eval()
    chunks = []
    with torch.no_grad(), tqdm(total=len(images), desc="clean: embeddings", leave=False) as bar:
        for start in range(0, len(images), batch_size):
            x = to_tensor(images[start : start + batch_size], device, polarity=polarity)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                chunks.append(net.embed(x).float().cpu())
            bar.update(len(x))
    if not chunks:
        return np.zeros((0, net.head.in_features), np.float32)
    return torch.cat(chunks).numpy()


def _set_head(net: torch.nn.Module, probe: object, n_classes: int) -> None:
    """``net.head`` := the fitted probe, its scaler folded in: ``W / sigma``, ``b - (W / sigma) . mu``.

    Binary regression has one weight row (the logit of class 1); softmax over ``(0, z)`` gives the
    same probabilities.
    """
    import torch

    scaler, regression = probe[0], probe[-1]
    weight = regression.coef_ / scaler.scale_
    bias = regression.intercept_ - weight @ scaler.mean_
    if weight.shape[0] == 1 and n_classes == 2:
        weight, bias = np.vstack([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
    with torch.no_grad():
        net.head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        net.head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

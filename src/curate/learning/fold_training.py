"""The models behind label-issue detection: out-of-sample predicted probabilities for cleanlab, from
K-fold models (:func:`out_of_sample_predictions`) or from a logistic regression per fold on a frozen
network's embeddings (:func:`embedding_predictions`), and the embeddings of every row by one shared
model. The folds stage calls them; :mod:`curate.curation.label_issues` reads what they predict.

Seeded: on the CPU the same inputs give the same bytes (the fold models reseed torch's global
generator). torch is imported inside the functions: the folds stage imports this module before its
input checks.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.model_selection import StratifiedKFold

from curate.errors import CurateError
from curate.learning import distributed

if TYPE_CHECKING:
    import torch

    from curate.learning.model_choice import Backbone


@dataclass
class FoldPredictions:
    pred_probs: np.ndarray  # N x K float32, row i predicted by the model that never saw i
    fold_of_row: np.ndarray  # N int, the fold in which row i was held out
    embeddings: np.ndarray  # N x D float32, all rows embedded by one shared model (fold 0's)
    embedder: torch.nn.Module  # that shared model


def check_class_sizes(labels: np.ndarray, class_names: list[str], k: int) -> None:
    """Stratified K-fold needs ``folds`` samples of each class: name the first class short of that."""
    counts = np.bincount(labels, minlength=len(class_names))
    for index in np.flatnonzero(counts < k):
        raise CurateError(
            f"folds.k: class {class_names[index]!r} has {counts[index]} train sample(s), fewer than "
            f"folds.k = {k}; add samples of that class or lower folds.k"
        )


@dataclass(frozen=True)
class FoldTraining:
    """How each fold model is trained (the ``folds`` params as the fold loop needs them)."""

    n_classes: int
    backbone: Backbone  # the network each fold model is, and how it starts (folds.model, weights, ...)
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


def fold_splits(strata: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit_rows, held_out)`` per fold, stratified by ``strata`` (group x label), so a small group
    is spread over every fold instead of landing in one, where its model would never have seen it."""
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
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
    import torch

    from curate.learning.inference import predict
    from curate.learning.training import FitConfig, fit

    channels, size = images.shape[3], images.shape[1]
    nets, probs = [], []
    for member in range(training.ensemble):
        # Member 0 keeps the seed a single model has always had; the others are seeded apart.
        member_seed = training.seed * 1000 + fold + 100_000 * member
        torch.manual_seed(member_seed)  # weight init
        net = training.backbone.initial_model(training.n_classes, channels, size)
        config = FitConfig(
            epochs=fold_epochs(len(fit_rows), training),
            batch_size=training.batch_size,
            lr=training.lr,
            seed=member_seed,
            device=device,
            polarity=training.polarity,
            augment=training.augment,
        )
        fit(net, images[fit_rows], labels[fit_rows], config, progress=progress)
        member_probs, _ = predict(
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
    k: int,
    training: FoldTraining,
    device: torch.device,
) -> FoldPredictions | None:
    """Train one CNN per fold on the other folds and predict the held-out fold (:func:`fold_model`);
    fold 0's model embeds every row. ``strata``: see :func:`fold_splits`. ``images``: an array or
    a :class:`curate.data.image_rows.ImageRows` (each fold reads its rows from it).

    Under torchrun with several processes (``folds.nproc``), the folds are spread over the ranks
    (fold f on rank f % world, each on its own GPU on CUDA) and rank 0 gathers the held-out
    probabilities and returns the whole; the other ranks return None. Each fold is seeded by the
    fold alone, so the result is the one a single process computes.
    """
    from curate.learning.inference import embed

    with distributed.process_group(device.type) as ranks:
        device = distributed.rank_device(device, ranks, "folds.nproc")
        mine: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        embedder = None
        for fold, (fit_rows, held_out) in enumerate(fold_splits(strata, k, training.seed)):
            if fold % ranks.world != ranks.rank:
                continue
            progress = f"folds: fold {fold + 1}/{k}" if ranks.main else None
            net, probs = fold_model(images, labels, fit_rows, held_out, fold, training, device, progress)
            mine[fold] = (held_out, probs)
            if fold == 0:
                embedder = net
        gathered = distributed.gather_to_main(mine)
    if gathered is None:
        return None
    pred_probs = np.zeros((len(labels), training.n_classes), dtype=np.float32)
    fold_of_row = np.full(len(labels), -1, dtype=np.int64)
    for fold, (held_out, probs) in sorted(item for share in gathered for item in share.items()):
        pred_probs[held_out] = probs
        fold_of_row[held_out] = fold
    embeddings = embed(embedder, images, batch_size=1024, device=device, polarity=training.polarity)
    return FoldPredictions(pred_probs, fold_of_row, embeddings, embedder)


def embedding_predictions(
    images: np.ndarray,
    labels: np.ndarray,
    strata: np.ndarray,
    *,
    net: torch.nn.Module,
    k: int,
    seed: int,
    polarity: str,
    device: torch.device,
    batch_size: int,
) -> FoldPredictions:
    """``folds.method: embeddings``, cleanlab's cheap path: every row embedded once by the frozen
    ``net`` (:func:`curate.learning.inference.embed`), then a logistic regression per fold
    (:func:`fold_splits`, as the
    K-fold CNNs use) on the other folds' embeddings predicts the held-out fold.

    The features are standardised inside each fold (the scaler sees only that fold's fit rows).
    The returned embedder is ``net`` with its head set to the regression fitted on every row
    (:func:`_set_head`), so the checkpoint classifies as the fold models do.
    """
    from sklearn.model_selection import cross_val_predict
    from threadpoolctl import threadpool_limits

    from curate.learning.inference import embed

    embeddings = embed(
        net, images, batch_size=batch_size, device=device, polarity=polarity, progress="folds: embeddings"
    )
    splits = fold_splits(strata, k, seed)
    # One BLAS thread: lbfgs evaluates the loss hundreds of times on N x 64 x classes products,
    # too small to share out; with 2 OpenBLAS threads on 2 busy cores one probe took 15.8 s
    # against 0.32 s on one thread (2,251 rows), and a thread count cannot change the bytes.
    with threadpool_limits(limits=1, user_api="blas"):
        pred_probs = cross_val_predict(
            _probe(seed), embeddings, labels, cv=splits, method="predict_proba"
        ).astype(np.float32)
        probe = _probe(seed).fit(embeddings, labels)
    fold_of_row = np.full(len(labels), -1, dtype=np.int64)
    for fold, (_, held_out) in enumerate(splits):
        fold_of_row[held_out] = fold
    _set_head(net, probe, int(pred_probs.shape[1]))
    return FoldPredictions(pred_probs, fold_of_row, embeddings, net)


def _probe(seed: int) -> object:
    """The linear probe: standardised features, multinomial logistic regression (lbfgs, L2, C=1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


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

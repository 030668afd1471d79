"""Prototype of the clean stage's label-issue detection on the demo data.

Builds the demo, trains ``curate.model``'s CNN in stratified K folds (strata: group x label),
scores every cleanlab filter against the known flips, and compares with a logistic
regression on raw pixels. Usage: ``python benchmarks/clean_proto.py [--epochs 8] ...``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from cleanlab.count import num_label_issues
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from curate.demo import MINORITY_GROUP, build_demo
from curate.model import build_model, fit, predict

FILTERS = [
    "prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
    "predicted_neq_given", "calibrated_self_confidence", "calibrated_normalized_margin",
]


def flag_issues(labels: np.ndarray, probs: np.ndarray, filter_by: str) -> np.ndarray:
    """cleanlab's filters, plus ``calibrated_<method>``: flag the calibrated-count estimate of
    issues, lowest label-quality score first, across all classes."""
    if not filter_by.startswith("calibrated_"):
        return find_label_issues(labels, probs, filter_by=filter_by)
    n = num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated")
    scores = get_label_quality_scores(labels, probs, method=filter_by.removeprefix("calibrated_"))
    flag = np.zeros(len(labels), dtype=bool)
    flag[np.argsort(scores, kind="stable")[:n]] = True
    return flag


def report(name: str, labels, probs, is_flip, minority, wall: float, filters=FILTERS) -> None:
    print(f"{name}: wall {wall:.1f} s", flush=True)
    for filter_by in filters:
        flag = flag_issues(labels, probs, filter_by)
        tp = (flag & is_flip).sum()
        precision, recall = tp / max(flag.sum(), 1), tp / is_flip.sum()
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        minority_recall = (flag & is_flip & minority).sum() / max((is_flip & minority).sum(), 1)
        print(
            f"  {filter_by:30s} flagged {flag.sum():4d}  P {precision:.3f}  R {recall:.3f}"
            f"  F1 {f1:.3f}  {MINORITY_GROUP} R {minority_recall:.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images, samples = build_demo(
        seed=0, test_fraction=0.25, label_noise=0.10, minority_keep=0.10, size=28, channels=1
    )
    train = samples[samples["split"] == "train"]
    images = images[train["row"].to_numpy()]
    labels = train["label"].to_numpy()
    is_flip = labels != train["true_label"].to_numpy()
    minority = (train["group"] == MINORITY_GROUP).to_numpy()
    n_classes = int(samples["label"].max()) + 1
    device = torch.device("cpu")

    start = time.perf_counter()
    strata = train["group"].astype(str) + ":" + train["label"].astype(str)
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
    probs = np.zeros((len(labels), n_classes), dtype=np.float32)
    for fold, (fit_rows, held_rows) in enumerate(folds.split(images, strata)):
        torch.manual_seed(args.seed + fold)  # build_model draws the initial weights
        model = build_model("cnn", n_classes, channels=1, size=28)
        fit(model, images[fit_rows], labels[fit_rows], epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed + fold, device=device)
        probs[held_rows], _ = predict(model, images[held_rows], batch_size=1024, device=device)
    flag_issues(labels, probs, "calibrated_self_confidence")
    wall = time.perf_counter() - start
    name = f"cnn e{args.epochs} bs{args.batch_size} lr{args.lr} K{args.folds}"
    report(name, labels, probs, is_flip, minority, wall)

    if not args.no_baseline:
        start = time.perf_counter()
        pixels = images.reshape(len(images), -1) / 255.0
        lr_probs = cross_val_predict(
            LogisticRegression(max_iter=200), pixels, labels, cv=folds.split(pixels, strata),
            method="predict_proba",
        )
        wall = time.perf_counter() - start
        report("logistic regression", labels, lr_probs, is_flip, minority, wall,
               ["prune_by_noise_rate", "calibrated_self_confidence"])


if __name__ == "__main__":
    main()

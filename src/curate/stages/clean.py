"""clean: flag label issues with cleanlab on out-of-sample K-fold CNN predictions, then act.

Reads ``data/raw``; writes ``data/clean/samples.parquet`` (every raw row: train rows
with ``label_quality``, ``is_label_issue``, ``predicted_label``, ``action``,
``fold``, ...; test rows untouched), ``data/clean/pred_probs.npy`` (train rows x
classes, sorted class order; a row's ``pred_row`` indexes it),
``data/clean/embeddings.npy`` and ``data/clean/embedder.pt`` (the shared
model whose embeddings drive the duplicate and outlier checks), and the report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from curate import label_issues
from curate.checkpoint import save_checkpoint
from curate.cli import guarded, stage_parser
from curate.dataset import (
    CLEAN_DIR,
    RAW_DIR,
    class_names,
    read_images,
    read_samples,
    write_array,
    write_samples,
)
from curate.gates import show_gates
from curate.model import pick_device
from curate.params import load_params
from curate.report import Verdict, bar_chart, thumbnail, write_report

SUSPICIOUS_SHOWN = 40
DUPLICATE_SETS_SHOWN = 10
MEMBERS_SHOWN = 12
OUTLIERS_SHOWN = 24


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("clean", __doc__).parse_args(argv)
    params = load_params(args.params)
    settings = params.clean
    samples = read_samples(RAW_DIR / "samples.parquet")
    images = read_images(RAW_DIR / "images.npy")
    names = class_names(samples)
    is_train = (samples["split"] == "train").to_numpy()
    train = samples[is_train].copy()
    labels = train["label"].to_numpy()
    label_issues.check_class_sizes(labels, names, settings.folds)

    started = time.perf_counter()
    device = pick_device(settings.device, key=f"{args.params}: clean.device")
    train_images = np.asarray(images[train["row"].to_numpy()])
    predictions = label_issues.out_of_sample_predictions(
        train_images,
        labels,
        (train["group"] + ":" + train["label_name"]).to_numpy(),
        n_classes=len(names),
        folds=settings.folds,
        model_name=settings.model,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=params.seed,
        device=device,
    )
    is_issue, quality = label_issues.find_issues(
        labels,
        predictions.pred_probs,
        filter_by=settings.filter_by,
        frac_noise=settings.frac_noise,
        min_examples_per_class=settings.min_examples_per_class,
        rank_by=settings.rank_by,
    )
    checks = label_issues.duplicates_and_outliers(predictions.embeddings, labels)

    train["given_label"] = labels
    train["label_quality"] = quality
    train["is_label_issue"] = is_issue
    train["predicted_label"] = predictions.pred_probs.argmax(axis=1)
    train["predicted_confidence"] = predictions.pred_probs.max(axis=1).astype(np.float64)
    train["fold"] = predictions.folds
    train["pred_row"] = np.arange(len(train))
    for column in checks.columns:
        train[column] = checks[column].to_numpy()
    extras = label_issues.duplicate_extras(checks["duplicate_set"].to_numpy(), quality)
    train["drop_candidate"] = extras & settings.drop_near_duplicates
    train["action"], cap_notes = label_issues.decide_actions(
        train,
        action=settings.action,
        relabel_min_confidence=settings.relabel_min_confidence,
        max_drop_fraction=settings.max_drop_fraction,
    )
    relabel = train["action"] == "relabel"
    train.loc[relabel, "label"] = train.loc[relabel, "predicted_label"]
    train["label_name"] = [names[label] for label in train["label"]]
    seconds = time.perf_counter() - started

    cleaned = _merge_back(samples, train.drop(columns="drop_candidate"))
    write_samples(CLEAN_DIR / "samples.parquet", cleaned)
    write_array(CLEAN_DIR / "pred_probs.npy", predictions.pred_probs)
    write_array(CLEAN_DIR / "embeddings.npy", predictions.embeddings)
    save_checkpoint(
        CLEAN_DIR / "embedder.pt",
        predictions.embedder,
        {
            "name": settings.model,
            "n_classes": len(names),
            "channels": int(images.shape[3]),
            "size": int(images.shape[1]),
            "class_names": names,
        },
    )
    metrics = clean_metrics(train)
    context = report_context(train, images, names, cap_notes, metrics, settings)
    sizes = write_report("clean", show_gates(context, params.gates, "clean", metrics), metrics)
    print(
        f"clean: {metrics['flagged']:,} flagged, {metrics['dropped']:,} dropped, "
        f"{metrics['relabelled']:,} relabelled of {len(train):,} train samples "
        f"in {seconds:.1f} s on {device}; reports/clean.html {sizes['html']:,} bytes"
    )
    return 0


def _merge_back(samples: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """All raw rows in raw order: cleaned train rows, test rows with neutral clean columns."""
    test = samples[samples["split"] != "train"].copy()
    test["action"] = "none"
    test["given_label"] = test["label"]
    merged = pd.concat([train, test]).loc[samples.index]
    for column in ("is_label_issue", "is_near_duplicate", "is_outlier"):
        merged[column] = merged[column].astype("boolean").fillna(False).astype(bool)
    for column in ("given_label", "predicted_label", "fold", "pred_row", "duplicate_set"):
        merged[column] = merged[column].fillna(-1).astype(np.int64)
    return merged


def clean_metrics(train: pd.DataFrame) -> dict:
    flagged = train["is_label_issue"].to_numpy()
    metrics = {
        "flagged": int(flagged.sum()),
        "dropped": int((train["action"] == "drop").sum()),
        "relabelled": int((train["action"] == "relabel").sum()),
        "flagged_rate": float(flagged.mean()) if len(train) else 0.0,
        "near_duplicates": int(train["is_near_duplicate"].sum()),
        "outliers": int(train["is_outlier"].sum()),
    }
    if "true_label" in train.columns:
        noisy = (train["given_label"] != train["true_label"]).to_numpy()
        scores = label_issues.detection_scores(flagged, noisy)
        metrics |= {f"detect_{name}": value for name, value in scores.items()}
        metrics["detect_recall_by_group"] = {
            group: label_issues.detection_scores(flagged[rows], noisy[rows])["recall"]
            for group, rows in train.groupby("group").indices.items()
        }
    return metrics


def _counts_by(train: pd.DataFrame, column: str) -> list[list]:
    rows = []
    for key, part in train.groupby(column, sort=True):
        flagged = int(part["is_label_issue"].sum())
        row = [
            key,
            len(part),
            flagged,
            int((part["action"] == "drop").sum()),
            int((part["action"] == "relabel").sum()),
            flagged / len(part),
        ]
        if "true_label" in part.columns:
            noisy = part["given_label"] != part["true_label"]
            row += [int(noisy.sum()), int((noisy & part["is_label_issue"]).sum())]
        rows.append(row)
    return rows


def _thumb(images: np.ndarray, row: pd.Series, names: list[str], caption: str) -> dict:
    return {
        "uri": thumbnail(images[row["row"]]),
        "caption": caption,
        "title": f"{row['path']}: given {names[row['given_label']]}, predicted "
        f"{names[row['predicted_label']]}, quality {row['label_quality']:.3f}",
    }


def report_context(train, images, names, cap_notes, metrics, settings) -> dict:
    verdict = Verdict(
        warnings=[f"max_drop_fraction {settings.max_drop_fraction} bound: {note}" for note in cap_notes]
    )
    flagged = train[train["is_label_issue"]].sort_values("label_quality", kind="stable")
    suspicious = [
        _thumb(
            images,
            row,
            names,
            f"{names[row['given_label']]}→{names[row['predicted_label']]} {row['label_quality']:.2f}",
        )
        for _, row in flagged.head(SUSPICIOUS_SHOWN).iterrows()
    ]
    matrix = pd.crosstab(flagged["given_label"], flagged["predicted_label"]).reindex(
        index=range(len(names)), columns=range(len(names)), fill_value=0
    )
    groups = sorted(train["group"].unique())
    chart = bar_chart(
        names,
        {
            g: [int(flagged[(flagged["group"] == g)]["given_label"].eq(i).sum()) for i in range(len(names))]
            for g in groups
        },
        key="clean-flagged",
        ylabel="flagged samples",
        title="Flagged samples by given class and group",
        stacked=True,
    )
    sets = train[train["duplicate_set"] >= 0].groupby("duplicate_set", sort=True)
    duplicate_rows = [
        {
            "size": len(members),
            "items": [
                _thumb(images, row, names, names[row["given_label"]])
                for _, row in members.head(MEMBERS_SHOWN).iterrows()
            ],
        }
        for _, members in list(sets)[:DUPLICATE_SETS_SHOWN]
    ]
    outliers = train[train["is_outlier"]].sort_values("outlier_score", kind="stable").head(OUTLIERS_SHOWN)
    has_truth = "true_label" in train.columns
    headers = ["train rows", "flagged", "dropped", "relabelled", "flag rate"]
    headers += ["injected flips", "flips caught"] if has_truth else []
    return {
        "verdict": verdict,
        "settings": settings,
        "headline": [
            (k, metrics[k])
            for k in ("flagged", "dropped", "relabelled", "flagged_rate", "near_duplicates", "outliers")
            + (("detect_precision", "detect_recall", "detect_f1") if has_truth else ())
        ],
        "class_headers": ["class", *headers],
        "class_rows": _counts_by(train, "label_name"),
        "group_headers": ["group", *headers],
        "group_rows": _counts_by(train, "group"),
        "chart": chart,
        "suspicious": suspicious,
        "matrix_headers": ["given \\ predicted", *names],
        "matrix_rows": [
            [names[i], *matrix.loc[i].tolist()] for i in range(len(names)) if matrix.loc[i].sum()
        ],
        "duplicate_sets": duplicate_rows,
        "n_duplicate_sets": sets.ngroups,
        "outliers": [
            _thumb(images, row, names, f"{row['outlier_score']:.2f}") for _, row in outliers.iterrows()
        ],
    }


if __name__ == "__main__":
    sys.exit(guarded(main))

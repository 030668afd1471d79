"""clean: flag label issues with cleanlab on the out-of-sample predictions of ``folds``, then act.

Reads ``data/raw`` and what the ``folds`` stage wrote into ``data/folds/`` (``pred_probs.npy``,
``folds.npy``, ``embeddings.npy``, ``environment.json``); writes ``data/clean/samples.parquet``
(every raw row: train rows with ``label_quality``, ``is_label_issue``, ``predicted_label``,
``action``, ``fold``, ...; a row's ``pred_row`` indexes ``pred_probs.npy``; test rows untouched)
and the report. No training here: changing how the predictions are read re-runs only this stage.

People have the last word: the review ledger (``clean.decisions``, :mod:`curate.data.ledger`) is
applied after cleanlab's actions and the cap. ``action_source`` says who decided a train row
(``auto`` | ``review``), ``auto_action`` what cleanlab would have done; test rows, never
cleaned nor reviewed, have ``none`` in both. ``action_reason`` says in words why a row got its
action, as decided here with these params: ``curate trace`` prints it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from markupsafe import Markup

from curate.curation import label_issues, removal_cap
from curate.curation.clean_actions import Choice, action_reasons, choose_action
from curate.data import ledger
from curate.data.inputs import read_array, read_json
from curate.data.lineage import Lineage
from curate.data.paths import (
    CLEAN_DIR,
    EMBEDDINGS,
    ENVIRONMENT,
    FOLD_OF_ROW,
    PRED_PROBS,
    RAW_SAMPLES,
    producer_of,
)
from curate.data.samples import RawInputs, read_raw, write_samples
from curate.data.store import Store
from curate.errors import CurateError
from curate.params import CleanParams, Params, load_params
from curate.report import Verdict, bar_chart, thumbnail
from curate.report.writer import write_stage
from curate.stage import Gate, Stage, guarded, stage_parser

STAGE = Stage(
    "clean",
    metrics=("flagged_rate", "dropped", "detect_f1", "detect_precision", "detect_recall", "review_precision"),
    gates={
        "max_flagged_rate": Gate("flagged_rate", "max"),
        "min_detect_f1": Gate("detect_f1", "min"),
        "min_review_precision": Gate("review_precision", "min"),
    },
)

OUTPUT = CLEAN_DIR / "samples.parquet"
SUSPICIOUS_SHOWN = 40
DUPLICATE_SETS_SHOWN = 10
MEMBERS_SHOWN = 12
OUTLIERS_SHOWN = 24
HEADLINE_ROWS = ("flagged", "dropped", "relabelled", "flagged_rate", "near_duplicates", "outliers")
REVIEW_HEADLINE_ROWS = (
    "reviewed",
    "confirmed",
    "overturned",
    "relabels_by_people",
    "orphaned",
    "review_precision",
)
ORPHANS_SHOWN = 50
DETECTION_HEADLINE_ROWS = ("detect_precision", "detect_recall", "detect_f1")


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("clean", __doc__).parse_args(argv)
    params = load_params(args.params)
    settings, lineage = params.clean, Lineage()
    inputs = read_raw()
    lineage.input_files(inputs.files)
    predictions = read_predictions(lineage, len(inputs.train), len(inputs.class_names))
    checks = label_issues.duplicates_and_outliers(predictions.embeddings, inputs.train["label"].to_numpy())
    decisions = ledger.read_ledger(lineage.input(settings.decisions))
    result = compute(inputs, predictions, checks, settings, decisions)
    write_samples(lineage.output(OUTPUT), result.samples)
    figures = metrics(result)
    sizes = write_stage(STAGE, params, figures, report_context(params, result), lineage)
    print(
        f"clean: {figures['flagged']:,} flagged, {figures['dropped']:,} dropped, "
        f"{figures['relabelled']:,} relabelled of {len(result.train):,} train samples; "
        f"reports/clean.html {sizes['html']:,} bytes"
    )
    return 0


@dataclass
class FoldOutputs:
    """What the folds stage wrote for clean, in the order of the train rows."""

    pred_probs: np.ndarray  # (N, K) out-of-sample predicted probabilities
    fold_of_row: np.ndarray  # (N,) the fold in which each row was held out
    embeddings: np.ndarray | None  # (N, D) the shared model's; None: no kNN evidence
    environment: list[tuple[str, object]]  # what computed them (torch, CPU kernels, threads)


def read_predictions(lineage: Lineage, n_train: int, n_classes: int) -> FoldOutputs:
    """``folds``' outputs, checked to belong to these train rows."""
    pred_probs, fold_of_row, embeddings = (
        read_array(lineage.input(path)) for path in (PRED_PROBS, FOLD_OF_ROW, EMBEDDINGS)
    )
    if pred_probs.shape != (n_train, n_classes) or len(fold_of_row) != n_train or len(embeddings) != n_train:
        raise CurateError(
            f"{PRED_PROBS}: {pred_probs.shape[0]} rows x {pred_probs.shape[1]} classes, but {RAW_SAMPLES} "
            f"has {n_train} train rows x {n_classes} classes "
            f"(re-run the {producer_of(PRED_PROBS)} stage: dvc repro)"
        )
    # What computed the predictions: their floats depend on it.
    environment = sorted(read_json(lineage.input(ENVIRONMENT)).items())
    return FoldOutputs(pred_probs, fold_of_row, embeddings, environment)


@dataclass
class Cleaned:
    samples: pd.DataFrame  # every input row, input order; test rows get neutral clean columns
    classes: list[str]  # (K,) class names by label
    cap_notes: list[str]  # where the removal cap held removals back, per class and group
    held_back: int  # rows the removal cap held back (kept with their given labels)
    fold_skill: float  # the fold models' agreement with the given labels beyond chance (kappa)
    choice: Choice  # what clean did with its flags, and why
    orphans: pd.DataFrame  # ledger decisions whose sample is not in the data (ledger.ORPHAN_COLUMNS)
    images: Store | np.ndarray  # the raw store (the report's thumbnails)
    environment: list[tuple[str, object]]  # what computed the predictions

    @property
    def train(self) -> pd.DataFrame:
        """The train rows, with the clean columns."""
        return self.samples[self.samples["split"] == "train"]


def compute(
    inputs: RawInputs,
    predictions: FoldOutputs,
    checks: pd.DataFrame,
    settings: CleanParams,
    decisions: pd.DataFrame | None = None,
) -> Cleaned:
    """Flag, then act on, the train rows of the raw table; no training, no I/O.

    ``predictions`` are out-of-sample K-fold predictions and ``checks`` the near-duplicate and
    outlier columns of :func:`curate.curation.label_issues.duplicates_and_outliers`, all in the order of
    the train rows. ``decisions``: the review ledger as :func:`curate.data.ledger.read_ledger` reads it
    (None: none), checked against the table and applied last, over the automatic actions.
    ``predictions.embeddings`` (the shared model's): the kNN evidence cleanlab reads beside
    ``pred_probs`` (``clean.knn_weight``). ``predicted_label`` stays the fold model's.
    """
    samples, class_names, pred_probs = inputs.samples, inputs.class_names, predictions.pred_probs
    decisions = ledger.no_decisions() if decisions is None else decisions
    review = ledger.resolve(decisions, samples, class_names, settings.decisions)
    train = samples[samples["split"] == "train"].copy()
    labels = train["label"].to_numpy()
    is_issue, quality = _detect(train, predictions, settings)
    train = _flag(train, is_issue, quality, predictions, checks)
    extras = label_issues.duplicate_extras(checks["duplicate_set"].to_numpy(), quality)
    train["drop_candidate"] = extras & settings.drop_near_duplicates
    skill = label_issues.fold_skill(train["predicted_label"].to_numpy(), labels)
    choice = choose_action(settings, skill, float(is_issue.mean()) if len(train) else 0.0)
    action = choice.action
    train["relabel_floor"] = label_issues.relabel_floors(pred_probs, labels, settings.relabel_min_confidence)
    decision = label_issues.decide_actions(
        train,
        action=action,
        relabel_floor=train["relabel_floor"].to_numpy(),
        max_drop_fraction=settings.max_drop_fraction,
        cap=settings.cap,
        min_rows=settings.min_examples_per_class,
    )
    train["action"] = decision.actions
    relabel = train["action"] == "relabel"
    train.loc[relabel, "label"] = train.loc[relabel, "predicted_label"]
    train = ledger.apply(train.drop(columns="drop_candidate"), review, class_names)
    # A held-back row's reason formats what the cap recorded as it held the row (decision.holds).
    train["action_reason"] = action_reasons(train, settings, class_names, choice, decision.holds)
    merged = _merge_back(samples, train.drop(columns="relabel_floor"))
    return Cleaned(merged, class_names, decision.notes, len(decision.holds), skill, choice, review.orphans,
                   inputs.images, predictions.environment)  # fmt: skip


def _detect(
    train: pd.DataFrame, predictions: FoldOutputs, settings: CleanParams
) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's flags and label quality for the train rows
    (:func:`curate.curation.label_issues.find_issues`)."""
    labels = train["label"].to_numpy()
    # What cleanlab reads: the fold models' probabilities, calibrated and mixed with kNN evidence.
    evidence = label_issues.evidence(
        predictions.pred_probs,
        labels,
        predictions.fold_of_row,
        predictions.embeddings,
        calibrate=settings.calibrate,
        knn_weight=settings.knn_weight,
        knn_k=settings.knn_k,
    )
    is_issue, quality = label_issues.find_issues(
        labels,
        evidence,
        filter_by=settings.filter_by,
        frac_noise=settings.frac_noise,
        min_examples_per_class=settings.min_examples_per_class,
        rank_by=settings.rank_by,
        groups=train["group"].to_numpy() if settings.thresholds == "per_group" else None,
    )
    return is_issue, quality


def _flag(
    train: pd.DataFrame,
    is_issue: np.ndarray,
    quality: np.ndarray,
    predictions: FoldOutputs,
    checks: pd.DataFrame,
) -> pd.DataFrame:
    """The train rows with cleanlab's verdict, the fold model's prediction and the checks' columns."""
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


def _merge_back(samples: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """All raw rows in raw order: cleaned train rows, test rows with neutral clean columns."""
    test = samples[samples["split"] != "train"].copy()
    test["action"] = test["auto_action"] = test["action_source"] = "none"
    test["action_reason"] = "test sample: the test split is never cleaned"
    test["given_label"] = test["label"]
    merged = pd.concat([train, test]).loc[samples.index]
    for column in ("is_label_issue", "is_near_duplicate", "is_outlier"):
        merged[column] = merged[column].astype("boolean").fillna(False).astype(bool)
    for column in ("given_label", "predicted_label", "fold", "pred_row", "duplicate_set"):
        merged[column] = merged[column].fillna(-1).astype(np.int64)
    return merged


def metrics(result: Cleaned) -> dict:
    train = result.train
    flagged = train["is_label_issue"].to_numpy()
    figures = {
        "flagged": int(flagged.sum()),
        "dropped": int((train["action"] == "drop").sum()),
        "relabelled": int((train["action"] == "relabel").sum()),
        "held_back": result.held_back,
        "fold_skill": result.fold_skill,
        "flagged_rate": float(flagged.mean()) if len(train) else 0.0,
        "near_duplicates": int(train["is_near_duplicate"].sum()),
        "outliers": int(train["is_outlier"].sum()),
        **ledger.figures(train),
        "orphaned": len(result.orphans),
    }
    if "true_label" in train.columns:
        noisy = (train["given_label"] != train["true_label"]).to_numpy()
        scores = label_issues.detection_scores(flagged, noisy)
        figures |= {f"detect_{name}": value for name, value in scores.items()}
        figures["detect_recall_by_group"] = {
            group: label_issues.detection_scores(flagged[rows], noisy[rows])["recall"]
            for group, rows in train.groupby("group").indices.items()
        }
    return figures


def report_context(params: Params, result: Cleaned) -> dict:
    settings, figures = params.clean, metrics(result)
    train, class_names, images = result.train, result.classes, result.images
    flagged = train[train["is_label_issue"]].sort_values("label_quality", kind="stable")
    has_truth = "true_label" in train.columns
    headers = ["train rows", "flagged", "dropped", "relabelled", "flag rate"]
    headers += ["injected flips", "flips caught"] if has_truth else []
    headline = HEADLINE_ROWS + (DETECTION_HEADLINE_ROWS if has_truth else ())
    cap = f"max_drop_fraction {settings.max_drop_fraction} bound"
    note = removal_cap.curation_note(figures, settings, params.gates.max_flagged_rate)
    return {
        "verdict": Verdict(
            warnings=[*filter(None, [note]), *(f"{cap}: {line}" for line in result.cap_notes)]
        ),
        "settings": settings,
        "choice": result.choice,
        "folds": params.folds,  # how the predictions were made, which the report states
        "headline": [(key, figures[key]) for key in headline],
        "class_headers": ["class", *headers],
        "class_rows": _counts_by(train, "label_name"),
        "group_headers": ["group", *headers],
        "group_rows": _counts_by(train, "group"),
        "chart": _flagged_chart(flagged, sorted(train["group"].unique()), class_names),
        "suspicious": _suspicious(flagged, images, class_names),
        "matrix_headers": ["given \\ predicted", *class_names],
        "matrix_rows": _matrix_rows(flagged, class_names),
        "duplicate_sets": _duplicate_sets(train, images, class_names),
        "n_duplicate_sets": int(train.loc[train["duplicate_set"] >= 0, "duplicate_set"].nunique()),
        "outliers": _outliers(train, images, class_names),
        **_review_context(result, figures),
        "environment": result.environment,
    }


def _review_context(result: Cleaned, figures: dict) -> dict:
    """The People's decisions section: the figures, automatic action x decision, the orphans."""
    reviewed = result.train[result.train["action_source"] == "review"]
    matrix = pd.crosstab(reviewed["auto_action"], reviewed["action"]).reindex(
        index=["none", "keep", "drop", "relabel"], columns=list(ledger.DECISIONS), fill_value=0
    )
    orphans = result.orphans.head(ORPHANS_SHOWN)
    return {
        "review_headline": [(key, figures[key]) for key in REVIEW_HEADLINE_ROWS],
        "review_headers": ["automatic \\ people", *ledger.DECISIONS],
        "review_rows": [
            [auto, *matrix.loc[auto].tolist()] for auto in matrix.index if matrix.loc[auto].sum()
        ],
        "orphan_headers": list(ledger.ORPHAN_COLUMNS),
        "orphan_rows": orphans.to_numpy().tolist(),
        "orphans_hidden": len(result.orphans) - len(orphans),
    }


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


def _flagged_chart(flagged: pd.DataFrame, groups: list[str], class_names: list[str]) -> Markup:
    """Flagged rows per given class, one stacked bar segment per group."""
    counts = {
        group: [
            int(flagged[flagged["group"] == group]["given_label"].eq(k).sum())
            for k in range(len(class_names))
        ]
        for group in groups
    }
    return bar_chart(
        class_names,
        counts,
        key="clean-flagged",
        ylabel="flagged samples",
        title="Flagged samples by given class and group",
        stacked=True,
    )


def _suspicious(flagged: pd.DataFrame, images: np.ndarray, class_names: list[str]) -> list[dict]:
    """Thumbnails of the lowest-quality flagged rows: given -> predicted label and quality."""
    return [
        _thumb(
            images,
            row,
            class_names,
            f"{class_names[row['given_label']]}→{class_names[row['predicted_label']]} "
            f"{row['label_quality']:.2f}",
        )
        for _, row in flagged.head(SUSPICIOUS_SHOWN).iterrows()
    ]


def _matrix_rows(flagged: pd.DataFrame, class_names: list[str]) -> list[list]:
    """Given x predicted label counts of the flagged rows; given classes with none left out."""
    matrix = pd.crosstab(flagged["given_label"], flagged["predicted_label"]).reindex(
        index=range(len(class_names)), columns=range(len(class_names)), fill_value=0
    )
    return [[class_names[k], *matrix.loc[k].tolist()] for k in range(len(class_names)) if matrix.loc[k].sum()]


def _duplicate_sets(train: pd.DataFrame, images: np.ndarray, class_names: list[str]) -> list[dict]:
    """The first near-duplicate sets, each with its size and the thumbnails of its first members."""
    sets = train[train["duplicate_set"] >= 0].groupby("duplicate_set", sort=True)
    return [
        {
            "size": len(members),
            "items": [
                _thumb(images, row, class_names, class_names[row["given_label"]])
                for _, row in members.head(MEMBERS_SHOWN).iterrows()
            ],
        }
        for _, members in list(sets)[:DUPLICATE_SETS_SHOWN]
    ]


def _outliers(train: pd.DataFrame, images: np.ndarray, class_names: list[str]) -> list[dict]:
    """Thumbnails of the most unusual outliers, lowest outlier score first."""
    outliers = train[train["is_outlier"]].sort_values("outlier_score", kind="stable").head(OUTLIERS_SHOWN)
    return [_thumb(images, row, class_names, f"{row['outlier_score']:.2f}") for _, row in outliers.iterrows()]


def _thumb(images: np.ndarray, row: pd.Series, class_names: list[str], caption: str) -> dict:
    """A thumbnail whose hover text names the file and the command that tells its whole story."""
    return {
        "uri": thumbnail(images[row["row"]]),
        "caption": caption,
        "title": f"{row['path']}: given {class_names[row['given_label']]}, predicted "
        f"{class_names[row['predicted_label']]}, quality {row['label_quality']:.3f}; "
        f"what happened to it: curate trace {row['sample_id']}",
    }


if __name__ == "__main__":
    sys.exit(guarded(main))

"""clean: flag label issues with cleanlab on the out-of-sample predictions of ``folds``, then act.

Reads ``data/raw`` and what the ``folds`` stage wrote into ``data/folds/`` (``pred_probs.npy``,
``folds.npy``, ``embeddings.npy``, ``environment.json``); writes ``data/clean/samples.parquet``
(every raw row: train rows with ``label_quality``, ``is_label_issue``, ``predicted_label``,
``action``, ``fold``, ...; a row's ``pred_row`` indexes ``pred_probs.npy``; test rows untouched)
and the report. No training here: changing how the predictions are read re-runs only this stage.

People have the last word: the review ledger (``clean.decisions``, :mod:`curate.data.ledger`) is
applied after cleanlab's actions and the cap. Its audit lines also set how far the flags are
trusted (:mod:`curate.curation.audit`): under ``clean.act_when: audited`` clean acts only on the
flags of the label-quality bands whose audited precision clears ``clean.min_precision``. The
rules, in order: the fold-skill floor (weak fold models: no flag acted on), the audit, the cap.
``action_source`` says who decided a train row (``auto`` | ``review``), ``auto_action`` what
cleanlab would have done; test rows, never cleaned nor reviewed, have ``none`` in both.
``action_reason`` says in words why a row got its action, as decided here with these params:
``curate trace`` prints it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
from markupsafe import Markup

from curate.curation import audit, clean_report, label_issues, neighbours
from curate.curation.clean_actions import Cleaned, action_reasons, choose_action, with_test_rows
from curate.curation.clean_report import Tile
from curate.curation.label_issues import FoldOutputs
from curate.curation.neighbours import Neighbours
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
from curate.report import bar_chart, thumbnail
from curate.report.render import interval_chart
from curate.report.writer import write_stage
from curate.stage import Gate, Stage, guarded, stage_parser

STAGE = Stage(
    "clean",
    metrics=(
        "flagged_rate",
        "dropped",
        "detect_f1",
        "detect_precision",
        "detect_recall",
        "review_precision",
        "audited_precision",
    ),  # fmt: skip
    view="data",
    glance=("flagged_rate", "dropped", "detect_f1"),
    best={"detect_precision": "higher", "detect_recall": "higher"},
    gates={
        "max_flagged_rate": Gate("flagged_rate", "max"),
        "min_detect_f1": Gate("detect_f1", "min"),
        "min_review_precision": Gate("review_precision", "min"),
        "min_audited_precision": Gate("audited_precision", "min"),
    },
)

OUTPUT = CLEAN_DIR / "samples.parquet"


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("clean", __doc__).parse_args(argv)
    params = load_params(args.params)
    settings, lineage = params.clean, Lineage()
    inputs = read_raw()
    lineage.input_files(inputs.files)
    predictions = read_predictions(lineage, len(inputs.train), len(inputs.class_names))
    # One kNN graph of the embeddings for Datalab's checks and, when mixed in, the kNN evidence.
    k = max(neighbours.DATALAB_K, settings.knn_k) if settings.knn_weight > 0 else neighbours.DATALAB_K
    graph = neighbours.build(predictions.embeddings, k, settings.neighbour_search)
    checks = label_issues.duplicates_and_outliers(graph)
    decisions = ledger.read_ledger(lineage.input(settings.decisions))
    result = compute(inputs, predictions, checks, settings, decisions, graph, seed=params.seed)
    write_samples(lineage.output(OUTPUT), result.samples)
    figures = metrics(result)
    sizes = write_stage(STAGE, params, figures, report_context(params, result), lineage)
    print(
        f"clean: {figures['flagged']:,} flagged, {figures['dropped']:,} dropped, "
        f"{figures['relabelled']:,} relabelled of {len(result.train):,} train samples; "
        f"reports/clean.html {sizes['html']:,} bytes"
    )
    return 0


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


def compute(
    inputs: RawInputs,
    predictions: FoldOutputs,
    checks: pd.DataFrame,
    settings: CleanParams,
    decisions: pd.DataFrame | None = None,
    graph: Neighbours | None = None,
    *,
    seed: int = 0,
) -> Cleaned:
    """Flag, then act on, the train rows of the raw table; no training, no I/O.

    ``predictions`` are out-of-sample K-fold predictions and ``checks`` the near-duplicate and
    outlier columns of :func:`curate.curation.label_issues.duplicates_and_outliers`, all in the order of
    the train rows. ``decisions``: the review ledger as :func:`curate.data.ledger.read_ledger` reads it
    (None: none), checked against the table and applied last, over the automatic actions.
    ``graph``: the kNN graph of the shared model's embeddings (:func:`curate.curation.neighbours.build`),
    whose neighbours' given labels are the kNN evidence cleanlab reads beside ``pred_probs``
    (``clean.knn_weight``; None: none). ``seed``: the run's, which orders the audit
    (:func:`curate.curation.audit.order`). ``predicted_label`` stays the fold model's.
    """
    samples, class_names, pred_probs = inputs.samples, inputs.class_names, predictions.pred_probs
    decisions = ledger.no_decisions() if decisions is None else decisions
    review = ledger.resolve(decisions, samples, class_names, settings.decisions)
    train = samples[samples["split"] == "train"].copy()
    labels = train["label"].to_numpy()
    is_issue, quality = _detect(train, predictions, settings, graph)
    train = label_issues.flag_columns(train, is_issue, quality, predictions, checks)
    extras = label_issues.duplicate_extras(checks["duplicate_set"].to_numpy(), quality)
    train["drop_candidate"] = extras & settings.drop_near_duplicates
    skill = label_issues.fold_skill(train["predicted_label"].to_numpy(), labels)
    choice = choose_action(settings, skill, float(is_issue.mean()) if len(train) else 0.0)
    action = choice.action
    measured = audit.measure(train, review, class_names, settings, seed)
    held = audit.holds(train, measured, settings, action)
    train["relabel_floor"] = label_issues.relabel_floors(pred_probs, labels, settings.relabel_min_confidence)
    decision = label_issues.decide_actions(
        train.assign(is_label_issue=train["is_label_issue"] & ~held),  # held flags ask for nothing
        action="keep" if action == "weight" else action,  # weighted flags stay, as kept ones do
        relabel_floor=train["relabel_floor"].to_numpy(),
        max_drop_fraction=settings.max_drop_fraction,
        cap=settings.cap,
        min_rows=settings.min_examples_per_class,
    )
    train["action"] = decision.actions.where(~held, "keep")
    _weigh(train, held, measured, action, pred_probs[np.arange(len(train)), labels])
    relabel = train["action"] == "relabel"
    train.loc[relabel, "label"] = train.loc[relabel, "predicted_label"]
    train = ledger.apply(train.drop(columns="drop_candidate"), review, class_names)
    train.loc[train["action_source"] == "review", "label_weight"] = 1.0  # a person's decision is sure
    # A held-back row's reason formats what the cap recorded as it held the row (decision.holds).
    train["action_reason"] = action_reasons(train, settings, class_names, choice, decision.holds)
    by_people = train["action_source"] == "review"
    held &= ~by_people  # a person's decision stands over the rule
    train.loc[held, "action_reason"] = audit.held_reasons(train[held], measured, settings)
    merged = with_test_rows(samples, train.drop(columns=["relabel_floor", "weight_basis"]))
    return Cleaned(merged, class_names, decision.notes, len(decision.holds), skill, choice, review.orphans,
                   inputs.images, predictions.environment, graph, measured, int(held.sum()))  # fmt: skip


def _weigh(
    train: pd.DataFrame, held: pd.Series, measured: audit.Estimate, action: str, given: np.ndarray
) -> None:
    """``label_weight``, each train row's loss weight, in place: the chance its label is right
    (:func:`curate.curation.audit.label_weights`) for the flags the audit held and, under
    ``clean.action: weight``, for every flag kept; 1 for the rest. ``given``: the fold models'
    probability of each row's given label. Adds ``weight_basis``, whence each weight came."""
    weights, basis = audit.label_weights(train, measured, given)
    weighted = held.copy()
    if action == "weight":
        kept = train["is_label_issue"] & ~held & (train["action"] == "keep")
        train.loc[kept, "action"] = "weight"
        weighted |= kept
    train["label_weight"] = np.where(weighted, weights, 1.0)
    train["weight_basis"] = basis


def _detect(
    train: pd.DataFrame, predictions: FoldOutputs, settings: CleanParams, graph: Neighbours | None
) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's flags and label quality for the train rows
    (:func:`curate.curation.label_issues.find_issues`)."""
    labels = train["label"].to_numpy()
    # What cleanlab reads: the fold models' probabilities, calibrated and mixed with kNN evidence.
    evidence = label_issues.evidence(
        predictions.pred_probs,
        labels,
        predictions.fold_of_row,
        graph,
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
        **result.audit.figures(),
        "audit_held": result.audit_held,
        "audit_bands": [
            {
                "band": band.band,
                "flags": band.flags,
                "quality_low": band.quality_low,
                "quality_high": band.quality_high,
                "counted": band.counted,
                "confirmed": band.confirmed,
                "waiting": band.waiting,
                "precision": band.precision,
                "low": band.interval[0],
                "high": band.interval[1],
            }
            for band in result.audit.bands
        ],
    }
    if result.neighbours is not None:  # which search found the duplicates, outliers and kNN evidence
        figures |= {"neighbour_search": result.neighbours.search, "neighbour_k": result.neighbours.k}
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
    """What the clean templates show: the kit's tables and words, the chart and the thumbnails."""
    images, shown = result.images, clean_report.shown(result)
    return {
        **clean_report.context(params, result, metrics(result)),
        "chart": _flagged_chart(result),
        "audit_chart": _audit_chart(result, params.clean.min_precision),
        "suspicious": _thumbnails(images, shown.suspicious),
        "duplicate_sets": [
            {"size": size, "items": _thumbnails(images, tiles)} for size, tiles in shown.duplicate_sets
        ],
        "outliers": _thumbnails(images, shown.outliers),
    }


def _flagged_chart(result: Cleaned) -> Markup:
    """Flagged rows per given class, one stacked bar segment per group."""
    return bar_chart(
        result.classes,
        clean_report.flagged_counts(result),
        key="clean-flagged",
        ylabel="flagged samples",
        title="Flagged samples by given class and group",
        stacked=True,
    )


def _audit_chart(result: Cleaned, min_precision: float) -> Markup | str:
    """Each band's audited precision with its interval, against clean.min_precision; hollow: held."""
    measured = result.audit
    if measured is None or not measured.audit_lines:
        return ""
    return interval_chart(
        [f"band {band.band}" for band in measured.bands],
        [band.precision for band in measured.bands],
        [band.interval for band in measured.bands],
        acted=[band.trusted(min_precision) for band in measured.bands],
        key="clean-audit",
        bar=min_precision,
        bar_label=f"clean.min_precision {min_precision:g}",
        ylabel="confirmed share of audited flags",
        title="Audited precision by label-quality band (1: most suspicious)",
    )


def _thumbnails(images: Store | np.ndarray, tiles: list[Tile]) -> list[dict]:
    """The tiles as the templates show them: each image's thumbnail, caption and hover text."""
    return [
        {"uri": thumbnail(images[tile.row]), "caption": tile.caption, "title": tile.title} for tile in tiles
    ]


if __name__ == "__main__":
    sys.exit(guarded(main))

"""What the clean report says about a :class:`~curate.curation.clean_actions.Cleaned` result: its
headline figures, the per-class and per-group counts, the given x predicted matrix, the review
summary, the verdict's warnings, and which rows its thumbnails show, as plain lists and strings.

It sits in ``curation/``, beside :mod:`curate.curation.label_issues` and
:mod:`curate.curation.clean_actions`, and not in ``curate.report``: ``curate.report`` holds the
rendering every stage shares (the Jinja environment, charts, thumbnails) and is a layer above the
kits, while this module only reads one kit's result and renders nothing, so it is tested without
templates or the chart code. It picks the rows the thumbnails show and words their captions
(:class:`Tile`); the stage (``curate.stages.clean``) draws the thumbnails and the chart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from curate.curation import removal_cap
from curate.curation.clean_actions import Cleaned
from curate.curation.gates import Verdict
from curate.data import ledger
from curate.params import Params

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


@dataclass(frozen=True)
class Tile:
    """One thumbnail the report shows: the image's row in the raw store, its caption, its hover text."""

    row: int  # the sample's ``row``: its image in the raw store
    caption: str
    title: str


@dataclass(frozen=True)
class Shown:
    """The rows the report's thumbnails show, in the order shown."""

    suspicious: list[Tile]  # the lowest-quality flagged rows
    duplicate_sets: list[tuple[int, list[Tile]]]  # (the set's size, its first members)
    outliers: list[Tile]  # the most unusual outliers


def context(params: Params, result: Cleaned, figures: dict) -> dict:
    """What the clean templates show, but the chart and the thumbnails (the stage draws them);
    ``figures``: the stage's metrics of ``result``."""
    settings, train, class_names = params.clean, result.train, result.classes
    flagged = flagged_rows(train)
    has_truth = "true_label" in train.columns
    headers = ["train rows", "flagged", "dropped", "relabelled", "flag rate"]
    headers += ["injected flips", "flips caught"] if has_truth else []
    headline = HEADLINE_ROWS + (DETECTION_HEADLINE_ROWS if has_truth else ())
    return {
        "verdict": Verdict(warnings=verdict_warnings(params, result, figures)),
        "settings": settings,
        "choice": result.choice,
        "folds": params.folds,  # how the predictions were made, which the report states
        "headline": [(key, figures[key]) for key in headline],
        "class_headers": ["class", *headers],
        "class_rows": counts_by(train, "label_name"),
        "group_headers": ["group", *headers],
        "group_rows": counts_by(train, "group"),
        "matrix_headers": ["given \\ predicted", *class_names],
        "matrix_rows": matrix_rows(flagged, class_names),
        "n_duplicate_sets": int(train.loc[train["duplicate_set"] >= 0, "duplicate_set"].nunique()),
        "neighbours": result.neighbours,
        **review_context(result, figures),
        **audit_context(result, settings, figures),
        "audit_held": figures.get("audit_held", 0),
        "seed": params.seed,
        "environment": result.environment,
    }


def verdict_warnings(params: Params, result: Cleaned, figures: dict) -> list[str]:
    """What the removal cap did, with its numbers (:func:`curate.curation.removal_cap.curation_note`),
    then each class and group where it bound."""
    settings = params.clean
    cap = f"max_drop_fraction {settings.max_drop_fraction} bound"
    note = removal_cap.curation_note(figures, settings, params.gates.max_flagged_rate)
    measured = result.audit
    stale = None
    if measured is not None and measured.stale_share > settings.audit_max_stale:
        stale = (
            f"the audit is stale: {measured.stale} of its {measured.audit_lines} lines are set aside (their "
            f"flags changed since, over clean.audit_max_stale {settings.audit_max_stale:g}): audit anew "
            "(curate review --serve --audit 100)"
        )
    return [*filter(None, [note, stale]), *(f"{cap}: {line}" for line in result.cap_notes)]


def flagged_rows(train: pd.DataFrame) -> pd.DataFrame:
    """The flagged train rows, lowest label quality first."""
    return train[train["is_label_issue"]].sort_values("label_quality", kind="stable")


def flagged_counts(result: Cleaned) -> dict[str, list[int]]:
    """Flagged rows per given class (by label), per group (sorted): the chart's stacked bars."""
    train = result.train
    flagged = flagged_rows(train)
    return {
        group: [
            int(flagged[flagged["group"] == group]["given_label"].eq(k).sum())
            for k in range(len(result.classes))
        ]
        for group in sorted(train["group"].unique())
    }


def review_context(result: Cleaned, figures: dict) -> dict:
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


AUDIT_HEADERS = [
    "band",
    "label quality",
    "flags",
    "audited",
    "confirmed",
    "precision",
    "95% interval",
    "clean",
]


def audit_context(result: Cleaned, settings, figures: dict) -> dict:
    """The audit section: whether there is one, the rule it set, and one row per band."""
    measured = result.audit
    if measured is None or not measured.audit_lines:
        return {"audit": None, "audit_held": 0}
    rule_on = settings.act_when == "audited" and measured.audit_lines > measured.stale
    rows = []
    for band in measured.bands:
        low, high = band.interval
        if result.choice.action == "keep":
            fate = "none acted on"
        elif not rule_on:
            fate = "acted on"
        else:
            fate = "acted on" if band.trusted(settings.min_precision) else "held"
        rows.append([
            band.band, f"{band.quality_low:.3g}-{band.quality_high:.3g}" if band.flags else "-",
            band.flags, band.counted, band.confirmed, band.precision,
            f"{low:.2f}-{high:.2f}" if band.counted else "-", fate,
        ])  # fmt: skip
    headline = [(key, figures[key]) for key in ("audited_precision", "audited", "audit_held", "audit_stale")]
    return {
        "audit": measured, "audit_rule_on": rule_on, "audit_headers": AUDIT_HEADERS, "audit_rows": rows,
        "audit_headline": headline,
    }  # fmt: skip


def counts_by(train: pd.DataFrame, column: str) -> list[list]:
    """Per value of ``column``: train rows, flagged, dropped, relabelled, the flag rate, and, with
    known true labels, the injected flips and those caught."""
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


def matrix_rows(flagged: pd.DataFrame, class_names: list[str]) -> list[list]:
    """Given x predicted label counts of the flagged rows; given classes with none left out."""
    matrix = pd.crosstab(flagged["given_label"], flagged["predicted_label"]).reindex(
        index=range(len(class_names)), columns=range(len(class_names)), fill_value=0
    )
    return [[class_names[k], *matrix.loc[k].tolist()] for k in range(len(class_names)) if matrix.loc[k].sum()]


def shown(result: Cleaned) -> Shown:
    """The rows the thumbnails show: the lowest-quality flagged rows (given -> predicted label and
    quality), the first near-duplicate sets (their size, their first members) and the most unusual
    outliers (lowest outlier score first, with it)."""
    train, class_names = result.train, result.classes
    flagged = flagged_rows(train).head(SUSPICIOUS_SHOWN)
    suspicious = [
        tile(
            row,
            class_names,
            f"{class_names[row['given_label']]}→{class_names[row['predicted_label']]} "
            f"{row['label_quality']:.2f}",
        )
        for _, row in flagged.iterrows()
    ]
    in_sets = train[train["duplicate_set"] >= 0]
    first_sets = np.sort(in_sets["duplicate_set"].unique())[:DUPLICATE_SETS_SHOWN]  # not every set's frame
    sets = in_sets[in_sets["duplicate_set"].isin(first_sets)].groupby("duplicate_set", sort=True)
    duplicate_sets = [
        (
            len(members),
            [
                tile(row, class_names, class_names[row["given_label"]])
                for _, row in members.head(MEMBERS_SHOWN).iterrows()
            ],
        )
        for _, members in sets
    ]
    outliers = train[train["is_outlier"]].sort_values("outlier_score", kind="stable").head(OUTLIERS_SHOWN)
    return Shown(
        suspicious,
        duplicate_sets,
        [tile(row, class_names, f"{row['outlier_score']:.2f}") for _, row in outliers.iterrows()],
    )


def tile(row: pd.Series, class_names: list[str], caption: str) -> Tile:
    """A thumbnail whose hover text names the file and the command that tells its whole story."""
    return Tile(
        row["row"],
        caption,
        f"{row['path']}: given {class_names[row['given_label']]}, predicted "
        f"{class_names[row['predicted_label']]}, quality {row['label_quality']:.3f}; "
        f"what happened to it: curate trace {row['sample_id']}",
    )

"""evaluate: ``models/model.pt`` on the test split -> metrics, fairness by group, report.

The test rows are the ones no stage changed (clean, rebalance and augment touch train
rows only), read from the raw image store. Writes ``reports/metrics/evaluate.json`` (the
headline: accuracy, macro_f1, ece, the fairlearn group summaries and the largest one-vs-rest
parity gaps), ``reports/details/evaluate.json`` (the rest: per class, per group, the confusion
matrix), ``reports/plots/confusion.json`` (one ``{actual, predicted}``
record per test sample, for ``dvc plots`` template ``confusion``) and
``reports/evaluate.{html,md}``. The verdict shows the gates on these metrics
(``gates.min_accuracy``, ``gates.min_worst_group_accuracy``, ``gates.max_accuracy_gap``);
the gate stage is the one that can stop the pipeline on them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from curate.curation import evaluation
from curate.data.atomic import write_text
from curate.data.image_rows import ImageRows, image_rows, store_files
from curate.data.inputs import check_image_shape
from curate.data.lineage import Lineage
from curate.data.paths import AUGMENTED_DIR, MODEL, producer_of
from curate.data.samples import class_names_of, read_samples
from curate.errors import CurateError
from curate.params import Params, load_params
from curate.report import Verdict, bar_chart, matrix_chart, thumbnail
from curate.report.writer import write_stage
from curate.stage import Gate, Stage, guarded, stage_parser

STAGE = Stage(
    "evaluate",
    metrics=(
        "accuracy",
        "macro_f1",
        "worst_group_accuracy",
        "accuracy_gap",
        "ece",
        "dp_diff_ovr_max",
        "eo_diff_ovr_max",
    ),
    gates={
        "min_accuracy": Gate("accuracy", "min"),
        "min_worst_group_accuracy": Gate("worst_group_accuracy", "min"),
        "max_accuracy_gap": Gate("accuracy_gap", "max"),
    },
    view="model",
    glance=("accuracy", "worst_group_accuracy", "accuracy_gap"),
    best={"macro_f1": "higher", "ece": "lower", "dp_diff_ovr_max": "lower", "eo_diff_ovr_max": "lower"},
)

INPUT = AUGMENTED_DIR / "samples.parquet"
CONFUSION_PLOT = "reports/plots/confusion.json"
HEADLINE_ROWS = (
    "accuracy",
    "macro_f1",
    "ece",
    "worst_group_accuracy",
    "accuracy_gap",
    "accuracy_ratio",
    "dp_diff_ovr_max",
    "eo_diff_ovr_max",
)
CLASS_COLUMNS = ("support", "precision", "recall", "dp_diff_ovr", "eo_diff_ovr")  # of the by-class table


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("evaluate", __doc__).parse_args(argv)
    params = load_params(args.params)
    settings, lineage = params.evaluate, Lineage()
    samples = read_samples(lineage.input(INPUT))
    test = samples[samples["split"] == "test"]
    if test.empty:
        raise CurateError(f"{INPUT}: no rows with split 'test' to evaluate on")
    class_names = class_names_of(samples)
    # torch loads only past the cheap input checks (the checkpoint and the model need it).
    from curate.learning.checkpoint import load_checkpoint, polarity_of
    from curate.learning.devices import pick_device
    from curate.learning.inference import predict

    model, meta = load_checkpoint(lineage.input(MODEL))
    lineage.input_files(store_files(test))
    images = image_rows(test)  # read batch by batch by predict, never copied whole
    check_model(meta, class_names, images)
    device = pick_device(settings.device, key=f"{args.params}: evaluate.device")
    probs, _ = predict(model, images, batch_size=1024, device=device, polarity=polarity_of(meta))
    result = compute(test, probs, class_names, settings.calibration_bins, images, meta)
    write_text(CONFUSION_PLOT, confusion_records(result.y_true, result.y_pred, class_names))
    sizes = write_stage(STAGE, params, metrics(result), report_context(params, result), lineage)
    figures = result.headline
    print(
        f"evaluate: accuracy {figures['accuracy']:.4f}, worst group {figures['worst_group_accuracy']:.4f}, "
        f"ece {figures['ece']:.4f} on {len(test):,} test samples; "
        f"reports/evaluate.html {sizes['html']:,} bytes"
    )
    return 0


def check_model(meta: Mapping[str, Any], class_names: list[str], images: ImageRows | np.ndarray) -> None:
    """The model must be trained for these classes and take these images."""
    if list(meta.get("class_names", [])) != class_names:
        raise CurateError(
            f"{MODEL}: trained for classes {meta.get('class_names')}, but {INPUT} has {class_names} "
            f"(re-run the {producer_of(MODEL)} stage: dvc repro)"
        )
    check_image_shape(MODEL, meta, images.shape[1:], "the test images are")


@dataclass
class Evaluated:
    test: pd.DataFrame  # the test rows, table order
    class_names: list[str]  # (K,) class names by label
    probs: np.ndarray  # (N, K) predicted probabilities
    y_pred: np.ndarray  # (N,) predicted labels (argmax of probs)
    headline: dict[str, float]  # the HEADLINE_ROWS figures, in that order
    per_class: dict[str, dict[str, float]]  # by class name: precision, recall, support, dp/eo_diff_ovr
    by_group: dict[str, dict[str, float]]  # by group: accuracy, macro_recall, n
    confusion: list[list[int]]  # (K, K): test samples of class i predicted as j
    calibration: list[dict[str, float]]  # one row per confidence bin: low, high, count, accuracy, confidence
    images: ImageRows | np.ndarray  # the test images, table order (the report's thumbnails)
    model: Mapping[str, Any]  # the model's checkpoint meta

    @property
    def y_true(self) -> np.ndarray:
        return self.test["label"].to_numpy()


def compute(
    test: pd.DataFrame,
    probs: np.ndarray,
    class_names: list[str],
    bins: int,
    images: ImageRows | np.ndarray,
    model: Mapping[str, Any],
) -> Evaluated:
    """Every figure of the stage, from the test rows (label, group) and the model's probabilities;
    ``images`` and ``model`` (the checkpoint meta) are for the report."""
    y_true, y_pred = test["label"].to_numpy(), probs.argmax(axis=1)
    groups = test["group"].astype(str).to_numpy()
    figures = evaluation.classification_metrics(y_true, y_pred, class_names)
    figures["ece"] = evaluation.expected_calibration_error(y_true, probs, bins)
    figures |= evaluation.group_metrics(y_true, y_pred, groups)
    fairness = evaluation.one_vs_rest_fairness(y_true, y_pred, groups, class_names)
    for name, values in fairness.pop("per_class").items():
        figures["per_class"][name] |= values
    figures |= fairness
    return Evaluated(
        test=test,
        class_names=class_names,
        probs=probs,
        y_pred=y_pred,
        headline={key: figures[key] for key in HEADLINE_ROWS},
        per_class=figures["per_class"],
        by_group=figures["by_group"],
        confusion=figures["confusion"],
        calibration=evaluation.calibration_bins(y_true, probs, bins),
        images=images,
        model=model,
    )


def metrics(result: Evaluated) -> dict[str, Any]:
    """Every figure of the stage: the writer puts the headline ones in the DVC metrics (the columns
    of ``dvc exp show``), the per-class and per-group ones in the details."""
    return result.headline | {
        "n_test": len(result.y_pred),
        "per_class": result.per_class,
        "by_group": result.by_group,
        "confusion_matrix": result.confusion,
    }


def confusion_records(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> str:
    """One ``{"actual", "predicted"}`` record per test sample (class names), in table order."""
    records = [
        json.dumps({"actual": class_names[t], "predicted": class_names[p]}, separators=(",", ":"))
        for t, p in zip(y_true, y_pred, strict=True)
    ]
    return "[\n" + ",\n".join(records) + "\n]\n"


def report_context(params: Params, result: Evaluated) -> dict[str, Any]:
    """What the evaluate templates show."""
    settings, class_names, images, model = params.evaluate, result.class_names, result.images, result.model
    return {
        "settings": settings,
        "verdict": _verdict(result),
        "headline": list(result.headline.items()),
        "group_rows": [
            [g, row["n"], row["accuracy"], row["macro_recall"]] for g, row in result.by_group.items()
        ],
        "class_rows": _class_rows(result),
        "wrong": _confidently_wrong(result, images, settings.confidently_wrong),
        "confusion_chart": matrix_chart(
            np.asarray(result.confusion),
            class_names,
            class_names,
            key="evaluate-confusion",
            xlabel="predicted",
            ylabel="actual",
            title="Confusion matrix (test)",
        ),
        "confusion_rows": [
            [f"{name}", *row] for name, row in zip(class_names, result.confusion, strict=True)
        ],
        "group_chart": _group_chart(result),
        "n_wrong": int((result.y_true != result.y_pred).sum()),
        "n_test": len(result.test),
        "confusion_headers": ["actual \\ predicted", *class_names],
        "calibration_rows": [
            [f"{row['low']:.2f}-{row['high']:.2f}", row["count"], row["accuracy"], row["confidence"]]
            for row in result.calibration
            if row["count"]
        ],
        "model": {key: model[key] for key in ("name", "n_classes", "channels", "size")},
        "digest": model.get("params_digest", "n/a"),
    }


def _verdict(result: Evaluated) -> Verdict:
    verdict = Verdict()
    undefined = [name for name, row in result.per_class.items() if row["eo_diff_ovr"] != row["eo_diff_ovr"]]
    if undefined:
        verdict.warnings.append(
            f"equalized odds (one-vs-rest) undefined for class(es) {', '.join(undefined)}: "
            "a group has no test samples of the class, or only those"
        )
    return verdict


def _class_rows(result: Evaluated) -> list[list]:
    return [[name, *(result.per_class[name][key] for key in CLASS_COLUMNS)] for name in result.class_names]


def _confidently_wrong(result: Evaluated, images: ImageRows, count: int) -> list[dict[str, str]]:
    """Thumbnails of the ``count`` most confidently wrong test samples, most confident first."""
    y_true, y_pred, probs, class_names, test = (
        result.y_true,
        result.y_pred,
        result.probs,
        result.class_names,
        result.test,
    )
    return [
        {
            "uri": thumbnail(images[i]),
            "caption": f"{class_names[y_true[i]]}→{class_names[y_pred[i]]} {probs[i, y_pred[i]]:.2f}",
            "title": f"{test['path'].iloc[i]} ({test['group'].iloc[i]}): label {class_names[y_true[i]]}, "
            f"predicted {class_names[y_pred[i]]} with confidence {probs[i, y_pred[i]]:.3f}",
        }
        for i in evaluation.confidently_wrong(y_true, probs, count)
    ]


def _group_chart(result: Evaluated) -> str:
    groups = list(result.by_group)
    return bar_chart(
        groups,
        {
            "accuracy": [result.by_group[g]["accuracy"] for g in groups],
            "macro recall": [result.by_group[g]["macro_recall"] for g in groups],
        },
        key="evaluate-groups",
        ylabel="score",
        title="Test accuracy and macro recall by group",
    )


if __name__ == "__main__":
    sys.exit(guarded(main))

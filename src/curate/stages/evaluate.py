"""evaluate: ``models/model.pt`` on the test split -> metrics, fairness by group, report.

The test rows are the ones no stage changed (clean, rebalance and augment touch train
rows only), read from the raw image store. Writes ``reports/metrics/evaluate.json``
(accuracy, macro_f1, ece, the fairlearn group summaries and one-vs-rest parity figures,
per class and per group), ``reports/plots/confusion.json`` (one ``{actual, predicted}``
record per test sample, for ``dvc plots`` template ``confusion``) and
``reports/evaluate.{html,md}``. The verdict shows the gates on these metrics
(``gates.min_accuracy``, ``gates.min_worst_group_accuracy``, ``gates.max_accuracy_gap``);
the gate stage is the one that can stop the pipeline on them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd

from curate import evaluation
from curate.checkpoint import load_checkpoint
from curate.cli import guarded, stage_parser
from curate.dataset import AUGMENTED_DIR, MODELS_DIR, class_names, gather_images, read_samples, write_text
from curate.errors import CurateError
from curate.gates import show_gates
from curate.params import EvaluateParams, load_params
from curate.report import Verdict, bar_chart, matrix_chart, thumbnail, write_report

INPUT = AUGMENTED_DIR / "samples.parquet"
MODEL = MODELS_DIR / "model.pt"
CONFUSION_PLOT = "reports/plots/confusion.json"
HEADLINE = (
    "accuracy",
    "macro_f1",
    "ece",
    "worst_group_accuracy",
    "accuracy_gap",
    "accuracy_ratio",
    "dp_diff_ovr_max",
    "eo_diff_ovr_max",
)


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("evaluate", __doc__).parse_args(argv)
    params = load_params(args.params)
    settings = params.evaluate
    samples = read_samples(INPUT)
    test = samples[samples["split"] == "test"]
    if test.empty:
        raise CurateError(f"{INPUT}: no rows with split 'test' to evaluate on")
    names = class_names(samples)
    model, meta = load_checkpoint(MODEL)
    if list(meta.get("class_names", [])) != names:
        raise CurateError(
            f"{MODEL}: trained for classes {meta.get('class_names')}, but {INPUT} has {names} "
            "(re-run the train stage: dvc repro)"
        )
    images = gather_images(test)
    if images.shape[1:] != (meta["size"], meta["size"], meta["channels"]):
        raise CurateError(
            f"{MODEL}: built for {meta['size']} px x {meta['channels']} channels, but the test images are "
            f"{images.shape[1]} px x {images.shape[3]} channels (re-run the train stage: dvc repro)"
        )

    from curate.model import pick_device, predict  # torch only past the input checks

    probs, _ = predict(model, images, batch_size=1024, device=pick_device())
    y_true = test["label"].to_numpy()
    groups = test["group"].astype(str).to_numpy()
    results = evaluate(y_true, probs, groups, names, settings.calibration_bins)

    write_text(CONFUSION_PLOT, confusion_records(y_true, results["y_pred"], names))
    context = report_context(settings, test, images, probs, names, results, meta)
    stage_metrics = metrics(results)
    context = show_gates(context, params.gates, "evaluate", stage_metrics)
    sizes = write_report("evaluate", context, stage_metrics)
    print(
        f"evaluate: accuracy {results['accuracy']:.4f}, worst group {results['worst_group_accuracy']:.4f}, "
        f"ece {results['ece']:.4f} on {len(test):,} test samples; "
        f"reports/evaluate.html {sizes['html']:,} bytes"
    )
    return 0


def evaluate(y_true: np.ndarray, probs: np.ndarray, groups: np.ndarray, names: list[str], bins: int) -> dict:
    """Every figure of the stage, from labels, probabilities and groups."""
    y_pred = probs.argmax(axis=1)
    results = evaluation.classification_metrics(y_true, y_pred, names)
    results["ece"] = evaluation.expected_calibration_error(y_true, probs, bins)
    results["calibration"] = evaluation.calibration_bins(y_true, probs, bins)
    results |= evaluation.group_metrics(y_true, y_pred, groups)
    fairness = evaluation.one_vs_rest_fairness(y_true, y_pred, groups, names)
    for name, values in fairness.pop("per_class").items():
        results["per_class"][name] |= values
    results |= fairness
    results["y_pred"] = y_pred
    return results


def metrics(results: dict) -> dict:
    """The DVC metrics: headline figures at the top level (the columns of ``dvc exp show``)."""
    out = {key: results[key] for key in HEADLINE}
    out["n_test"] = len(results["y_pred"])
    out["per_class"] = results["per_class"]
    out["by_group"] = results["by_group"]
    out["confusion_matrix"] = results["confusion"]
    return out


def confusion_records(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> str:
    """One ``{"actual", "predicted"}`` record per test sample (class names), in table order."""
    records = [
        json.dumps({"actual": names[t], "predicted": names[p]}, separators=(",", ":"))
        for t, p in zip(y_true, y_pred, strict=True)
    ]
    return "[\n" + ",\n".join(records) + "\n]\n"


def _verdict(results: dict) -> Verdict:
    verdict = Verdict()
    undefined = [
        name for name, row in results["per_class"].items() if row["eo_diff_ovr"] != row["eo_diff_ovr"]
    ]
    if undefined:
        verdict.warnings.append(
            f"equalized odds (one-vs-rest) undefined for class(es) {', '.join(undefined)}: "
            "a group has no test samples of the class, or only those"
        )
    return verdict


def report_context(
    settings: EvaluateParams,
    test: pd.DataFrame,
    images: np.ndarray,
    probs: np.ndarray,
    names: list[str],
    results: dict,
    meta: dict,
) -> dict:
    y_true, y_pred = test["label"].to_numpy(), results["y_pred"]
    wrong = evaluation.confidently_wrong(y_true, probs, settings.confidently_wrong)
    thumbs = [
        {
            "uri": thumbnail(images[i]),
            "caption": f"{names[y_true[i]]}→{names[y_pred[i]]} {probs[i, y_pred[i]]:.2f}",
            "title": f"{test['path'].iloc[i]} ({test['group'].iloc[i]}): label {names[y_true[i]]}, "
            f"predicted {names[y_pred[i]]} with confidence {probs[i, y_pred[i]]:.3f}",
        }
        for i in wrong
    ]
    groups = list(results["by_group"])
    per_class = results["per_class"]
    return {
        "settings": settings,
        "verdict": _verdict(results),
        "headline": [(key, results[key]) for key in HEADLINE],
        "group_rows": [
            [
                g,
                results["by_group"][g]["n"],
                results["by_group"][g]["accuracy"],
                results["by_group"][g]["macro_recall"],
            ]
            for g in groups
        ],
        "class_rows": [
            [
                name,
                per_class[name]["support"],
                per_class[name]["precision"],
                per_class[name]["recall"],
                per_class[name]["dp_diff_ovr"],
                per_class[name]["eo_diff_ovr"],
            ]
            for name in names
        ],
        "confusion_chart": matrix_chart(
            np.asarray(results["confusion"]),
            names,
            names,
            key="evaluate-confusion",
            xlabel="predicted",
            ylabel="actual",
            title="Confusion matrix (test)",
        ),
        "confusion_rows": [[f"{name}", *row] for name, row in zip(names, results["confusion"], strict=True)],
        "group_chart": bar_chart(
            groups,
            {
                "accuracy": [results["by_group"][g]["accuracy"] for g in groups],
                "macro recall": [results["by_group"][g]["macro_recall"] for g in groups],
            },
            key="evaluate-groups",
            ylabel="score",
            title="Test accuracy and macro recall by group",
        ),
        "wrong": thumbs,
        "n_wrong": int((y_true != y_pred).sum()),
        "n_test": len(test),
        "confusion_headers": ["actual \\ predicted", *names],
        "calibration_rows": [
            [f"{row['low']:.2f}-{row['high']:.2f}", row["count"], row["accuracy"], row["confidence"]]
            for row in results["calibration"]
            if row["count"]
        ],
        "model": {key: meta[key] for key in ("name", "n_classes", "channels", "size")},
        "digest": meta.get("params_digest", "n/a"),
    }


if __name__ == "__main__":
    sys.exit(guarded(main))

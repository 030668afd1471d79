"""train_report: ``models/train.json`` (the ``train`` stage's run record) -> the training report.

Turns the run of the ``train`` stage into ``reports/train_report.{html,md}`` and its figures: the
curves, the epochs, the best epoch and why training stopped, the rows by group, the speed and
the environment that computed it. A stage of its own so that editing a report re-runs no
training. The throughput figures (seconds, images per second) are measured: they are the only
ones that change between two identical runs, and stay out of the DVC metrics.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from curate.data.lineage import Lineage
from curate.data.paths import RUN_RECORD
from curate.learning.run_record import RunRecord, Summary
from curate.params import Params, TrainParams, load_params
from curate.report import Verdict, line_chart
from curate.report.writer import write_stage
from curate.stage import Stage, guarded, stage_parser

STAGE = Stage(
    "train_report",
    metrics=("best_val_accuracy",),
    view="model",
    best={"best_val_accuracy": "higher"},
)

INPUT = RUN_RECORD


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("train_report", __doc__).parse_args(argv)
    params = load_params(args.params)
    lineage = Lineage()
    result = compute(RunRecord.read(lineage.input(INPUT)))
    sizes = write_stage(STAGE, params, metrics(result), report_context(params, result), lineage)
    print(
        f"train_report: report of a {result.summary.epochs_run}-epoch run; "
        f"reports/train_report.html {sizes['html']:,} bytes"
    )
    return 0


def compute(record: RunRecord) -> RunRecord:
    """Nothing left to compute: the train stage recorded what this report shows (checked on read)."""
    return record


def metrics(result: RunRecord) -> dict[str, float]:
    summary = result.summary
    return {
        "epochs_run": summary.epochs_run,
        "best_epoch": summary.best_epoch,
        "best_val_loss": summary.best_val_loss,
        "best_val_accuracy": summary.best_val_accuracy,
        "images_per_second": round(summary.images_per_second),
    }


def report_context(params: Params, result: RunRecord) -> dict[str, object]:
    settings, summary = params.train, result.summary
    return {
        "settings": settings,
        "seed": params.seed,
        "verdict": _verdict(settings, summary),
        "headline": [
            ("epochs run", summary.epochs_run),
            ("best epoch", summary.best_epoch),
            ("best val accuracy", summary.best_val_accuracy),
            ("best val loss", summary.best_val_loss),
        ],
        "speed": [
            ("device", summary.device),
            ("images per second", round(summary.images_per_second)),
            ("training seconds", f"{summary.train_seconds:.1f}"),
        ],
        "environment": sorted(result.environment.items()),
        "charts": _charts(result.history, summary.best_epoch),
        "epoch_rows": _epoch_rows(result.history, summary.best_epoch),
        "group_rows": result.group_rows,
        "n_fit": result.n_fit,
        "n_val": result.n_val,
        "settings_rows": [[key, json.dumps(value)] for key, value in settings.model_dump().items()],
        "digest": result.digest,
    }


def _verdict(settings: TrainParams, summary: Summary) -> Verdict:
    verdict = Verdict()
    epochs_run, best = summary.epochs_run, summary.best_epoch
    if epochs_run < settings.epochs:
        verdict.warnings.append(
            f"stopped early after {epochs_run} of {settings.epochs} epochs: no lower validation "
            f"loss for train.patience = {settings.patience} epochs"
        )
    elif best == epochs_run and epochs_run > 1:
        verdict.warnings.append(
            f"the best epoch is the last ({best}): validation loss was still falling; "
            "more train.epochs may help"
        )
    return verdict


def _charts(history: list[dict], best: int) -> list:
    epochs = [stats["epoch"] for stats in history]
    return [
        line_chart(
            epochs,
            {split: [stats[f"{split}_{name}"] for stats in history] for split in ("train", "val")},
            key=f"train-{name}",
            xlabel="epoch",
            ylabel=name,
            title=f"{name.capitalize()} by epoch",
            mark_x=best,
            mark_label=f"best epoch ({best})",
        )
        for name in ("loss", "accuracy")
    ]


def _epoch_rows(history: list[dict], best: int) -> list[list]:
    keys = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
    return [[stats[key] for key in keys] + ["best" if stats["epoch"] == best else ""] for stats in history]


if __name__ == "__main__":
    sys.exit(guarded(main))

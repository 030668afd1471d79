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
from dataclasses import dataclass
from typing import Any

from curate.data.inputs import read_json, require_columns
from curate.data.lineage import Lineage
from curate.data.paths import RUN_RECORD
from curate.params import Params, TrainParams, load_params
from curate.report import Verdict, line_chart
from curate.report.writer import write_stage
from curate.stage import Stage, guarded, stage_parser

STAGE = Stage(
    "train_report",
    metrics=("best_val_accuracy",),
)

INPUT = RUN_RECORD
RUN_KEYS = ("history", "summary", "group_rows", "n_fit", "n_val")


@dataclass(frozen=True)
class Run:
    """The train stage's run record, checked."""

    history: list[dict[str, Any]]  # per epoch: epoch, train/val loss and accuracy, seconds, images
    summary: dict[str, Any]  # epochs_run, best_epoch, best_val_loss/accuracy, device, the throughput
    group_rows: list[list]  # per group: originals, copies, share of the training weight, validation
    n_fit: int
    n_val: int
    digest: str  # SHA-256 of the train params that built the model ("n/a": an older record)
    environment: dict[str, Any]  # what trained it


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("train_report", __doc__).parse_args(argv)
    params = load_params(args.params)
    lineage = Lineage()
    result = compute(read_json(lineage.input(INPUT)))
    sizes = write_stage(STAGE, params, metrics(result), report_context(params, result), lineage)
    print(
        f"train_report: report of a {result.summary['epochs_run']}-epoch run; "
        f"reports/train_report.html {sizes['html']:,} bytes"
    )
    return 0


def compute(record: dict[str, Any]) -> Run:
    """The run record as the report reads it; one line when a key is missing (an older train stage)."""
    require_columns(record, INPUT, RUN_KEYS, kind="key")
    return Run(
        history=record["history"],
        summary=record["summary"],
        group_rows=record["group_rows"],
        n_fit=record["n_fit"],
        n_val=record["n_val"],
        digest=record.get("digest", "n/a"),
        environment=record.get("environment", {}),
    )


def metrics(result: Run) -> dict[str, float]:
    summary = result.summary
    return {
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "best_val_loss": summary["best_val_loss"],
        "best_val_accuracy": summary["best_val_accuracy"],
        "images_per_second": round(summary["images_per_second"]),
    }


def report_context(params: Params, result: Run) -> dict[str, object]:
    settings, summary = params.train, result.summary
    return {
        "settings": settings,
        "seed": params.seed,
        "verdict": _verdict(settings, summary),
        "headline": [
            ("epochs run", summary["epochs_run"]),
            ("best epoch", summary["best_epoch"]),
            ("best val accuracy", summary["best_val_accuracy"]),
            ("best val loss", summary["best_val_loss"]),
        ],
        "speed": [
            ("device", summary["device"]),
            ("images per second", round(summary["images_per_second"])),
            ("training seconds", f"{summary['train_seconds']:.1f}"),
        ],
        "environment": sorted(result.environment.items()),
        "charts": _charts(result.history, summary["best_epoch"]),
        "epoch_rows": _epoch_rows(result.history, summary["best_epoch"]),
        "group_rows": result.group_rows,
        "n_fit": result.n_fit,
        "n_val": result.n_val,
        "settings_rows": [[key, json.dumps(value)] for key, value in settings.model_dump().items()],
        "digest": result.digest,
    }


def _verdict(settings: TrainParams, summary: dict[str, Any]) -> Verdict:
    verdict = Verdict()
    epochs_run, best = summary["epochs_run"], summary["best_epoch"]
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

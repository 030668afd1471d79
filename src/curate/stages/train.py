"""train: ``models/fit.json`` (the ``fit`` stage's run record) -> the training report.

Turns the run of the ``fit`` stage into ``reports/train.{html,md}`` and its figures: the
curves, the epochs, the best epoch and why training stopped, the rows by group, the speed and
the environment that computed it. A stage of its own so that editing a report re-runs no
training. The throughput figures (seconds, images per second) are measured: they are the only
ones that change between two identical runs, and stay out of the DVC metrics.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from curate.dataset import MODELS_DIR, read_json
from curate.errors import CurateError
from curate.params import Params, TrainParams, load_params
from curate.report import Verdict, line_chart, write_report
from curate.stage import guarded, stage_parser

INPUT = MODELS_DIR / "fit.json"


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("train", __doc__).parse_args(argv)
    params = load_params(args.params)
    run = read_run()
    sizes = write_report("train", report_context(params, run), metrics(run))
    print(
        f"train: report of a {run['summary']['epochs_run']}-epoch run; "
        f"reports/train.html {sizes['html']:,} bytes"
    )
    return 0


def read_run() -> dict[str, Any]:
    run = read_json(INPUT, "fit")
    missing = [key for key in ("history", "summary", "group_rows", "n_fit", "n_val") if key not in run]
    if missing:
        raise CurateError(f"{INPUT}: no {missing[0]!r} (written by an older fit stage: dvc repro)")
    return run


def metrics(run: dict[str, Any]) -> dict[str, float]:
    summary = run["summary"]
    return {
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "best_val_loss": summary["best_val_loss"],
        "best_val_accuracy": summary["best_val_accuracy"],
        "images_per_second": round(summary["images_per_second"]),
    }


def report_context(params: Params, run: dict[str, Any]) -> dict[str, object]:
    settings, summary = params.train, run["summary"]
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
        "environment": sorted(run.get("environment", {}).items()),
        "charts": _charts(run["history"], summary["best_epoch"]),
        "epoch_rows": _epoch_rows(run["history"], summary["best_epoch"]),
        "group_rows": run["group_rows"],
        "n_fit": run["n_fit"],
        "n_val": run["n_val"],
        "settings_rows": [[key, json.dumps(value)] for key, value in settings.model_dump().items()],
        "digest": run.get("digest", "n/a"),
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

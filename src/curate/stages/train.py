"""train: ``data/augmented/samples.parquet`` -> ``models/model.pt`` + DVCLive curves + report.

Trains the classifier (``train.model``) on the train rows in play: the originals kept by
clean and their augmented copies, each repeated ``copies`` times (resampling) and
weighted by ``weight`` (rebalancing) through a weighted loss or a weighted sampler
(``train.weighting``). A validation split of ``train.val_fraction`` of the original train
rows, stratified by group x label, is held out together with every augmented copy of
those rows, so no copy of a validation image is trained on. The checkpoint keeps the
epoch with the lowest validation loss; ``train.patience`` epochs without a new lowest
stop training early.

Outputs: ``models/model.pt`` (state_dict + meta, loadable with ``weights_only=True``),
``dvclive/train/`` (per-epoch TSVs: train/val loss and accuracy), ``reports/train.{html,md}``
and ``reports/metrics/train.json``. Everything is a function of the inputs, the params and
the seed on the CPU except the throughput figures (images per second, seconds), which are
measured: they are the only bytes that change between two identical runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from curate.checkpoint import save_checkpoint
from curate.cli import guarded, stage_parser
from curate.dataset import (
    AUGMENTED_DIR,
    MODELS_DIR,
    class_names,
    gather_images,
    read_samples,
    stratified_test_mask,
    training_rows,
)
from curate.errors import CurateError
from curate.params import Params, TrainParams, load_params
from curate.report import Verdict, line_chart, write_report

INPUT = AUGMENTED_DIR / "samples.parquet"
MODEL = MODELS_DIR / "model.pt"
LIVE_DIR = Path("dvclive/train")
REQUIRED_COLUMNS = ("weight", "copies", "store", "parent_id")


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("train", __doc__).parse_args(argv)
    params = load_params(args.params)
    settings = params.train
    samples = read_samples(INPUT)
    for column in REQUIRED_COLUMNS:
        if column not in samples.columns:
            raise CurateError(f"{INPUT}: missing column {column!r} (written by the augment stage)")
    names = class_names(samples)
    fit_rows, val_rows = split_validation(samples, settings.val_fraction, params.seed)
    if fit_rows.empty or val_rows.empty:
        raise CurateError(
            f"{args.params}: train.val_fraction = {settings.val_fraction:g} leaves {len(fit_rows)} train and "
            f"{len(val_rows)} validation rows; both need at least one (more data or another fraction)"
        )
    images = gather_images(fit_rows)
    val_images = gather_images(val_rows)

    from curate import model as models  # torch models only past the input checks

    device = models.pick_device(settings.device, key=f"{args.params}: train.device")
    torch.manual_seed(params.seed)  # weight init
    net = models.build_model(settings.model, len(names), images.shape[3], images.shape[1])
    if settings.init_weights:
        load_initial_weights(net, Path(settings.init_weights))

    from dvclive import Live  # imported late: a heavy import, and not needed to check inputs

    with Live(dir=str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False, report=None) as live:

        def log_epoch(stats: dict) -> None:
            # timestamp=False: the TSVs are a function of the run, not of the clock.
            for split in ("train", "val"):
                live.log_metric(f"{split}/loss", stats[f"{split}_loss"], timestamp=False)
                live.log_metric(f"{split}/accuracy", stats[f"{split}_accuracy"], timestamp=False)
            live.next_step()

        history = models.fit(
            net,
            images,
            fit_rows["label"].to_numpy(),
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            seed=params.seed,
            device=device,
            sample_weights=fit_rows["weight"].to_numpy(dtype=np.float64),
            weighting=settings.weighting,
            augment=settings.online_augment,
            validation=(val_images, val_rows["label"].to_numpy(), None),
            patience=settings.patience,
            compile=settings.compile,
            on_epoch=log_epoch,
            progress="train",
        )

    meta = {
        "name": settings.model,
        "n_classes": len(names),
        "channels": int(images.shape[3]),
        "size": int(images.shape[1]),
        "class_names": names,
        "params_digest": params_digest(settings),
    }
    save_checkpoint(MODEL, net, meta)
    summary = summarise(history, device)
    context = report_context(params, fit_rows, val_rows, history, summary)
    sizes = write_report("train", context, metrics(summary))
    print(
        f"train: {summary['epochs_run']} epochs (best {summary['best_epoch']}, val accuracy "
        f"{summary['best_val_accuracy']:.4f}) on {device}, {summary['images_per_second']:,.0f} images/s, "
        f"{summary['train_seconds']:.1f} s; reports/train.html {sizes['html']:,} bytes"
    )
    return 0


def split_validation(
    samples: pd.DataFrame, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(fit_rows, val_rows)`` from the train rows in play.

    Validation: ``val_fraction`` of the original (``store == 'raw'``) train rows, stratified by
    group x label. Their augmented copies (``parent_id``) are dropped, so no copy of a
    validation image is trained on. ``fit_rows`` are expanded by ``copies`` (a row of
    copies 3 appears three times; 0 leaves it out).

    Validation is unweighted: the natural mix of the data. Weighted by the rebalance weights,
    a small group's few held-out rows (about 10 on the demo) carried a third of the validation
    loss, and the best epoch picked on that was noise (on one demo seed of three a
    mid-training epoch, 2 points of test accuracy below the last).
    """
    train = training_rows(samples)
    originals = train[train["store"] == "raw"]
    strata = originals["group"].astype(str) + ":" + originals["label"].astype(str)
    held_out = stratified_test_mask(strata.tolist(), val_fraction, seed)
    val_ids = set(originals["sample_id"][held_out])
    is_val = train["sample_id"].isin(val_ids).to_numpy()
    is_val_copy = train["parent_id"].isin(val_ids).to_numpy()
    val_rows = train[is_val]
    fit_rows = train[~is_val & ~is_val_copy]
    fit_rows = fit_rows.iloc[np.repeat(np.arange(len(fit_rows)), fit_rows["copies"].to_numpy())]
    return fit_rows, val_rows


def load_initial_weights(net: torch.nn.Module, path: Path) -> None:
    """Start from a local state_dict (or a curate checkpoint): tensors whose name and shape match.

    A head for another number of classes is left at its random init, so weights trained
    elsewhere can seed a new label set. Nothing is downloaded; loading never runs code.
    """
    if not path.is_file():
        raise CurateError(f"train.init_weights: {path}: file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch raises many kinds for a bad file)
        raise CurateError(f"train.init_weights: {path}: not a state_dict ({type(exc).__name__})") from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    own = net.state_dict()
    matched = {
        key: value
        for key, value in (state or {}).items()
        if isinstance(value, torch.Tensor) and key in own and own[key].shape == value.shape
    }
    if not matched:
        raise CurateError(f"train.init_weights: {path}: no tensor matches the {type(net).__name__} model")
    net.load_state_dict(matched, strict=False)


def params_digest(settings: TrainParams) -> str:
    """SHA-256 of the train section as sorted JSON: which params built this checkpoint."""
    text = json.dumps(settings.model_dump(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def summarise(history: list[dict], device: torch.device) -> dict:
    best = min(history, key=lambda stats: stats["val_loss"])
    seconds = sum(stats["seconds"] for stats in history)
    images = sum(stats["images"] for stats in history)
    return {
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "best_val_loss": best["val_loss"],
        "best_val_accuracy": best["val_accuracy"],
        "device": device.type,
        "train_seconds": seconds,
        "images_per_second": images / seconds if seconds > 0 else float("nan"),
    }


def metrics(summary: dict) -> dict:
    # images_per_second is measured, so it differs between runs: the only such key.
    return {
        "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "best_val_loss": summary["best_val_loss"],
        "best_val_accuracy": summary["best_val_accuracy"],
        "images_per_second": round(summary["images_per_second"]),
    }


def _group_rows(fit_rows: pd.DataFrame, val_rows: pd.DataFrame) -> list[list]:
    """Per group: originals, augmented copies (with repeats), share of the training weight, validation."""
    total_weight = fit_rows["weight"].sum()
    rows = []
    for group in sorted(set(fit_rows["group"]) | set(val_rows["group"])):
        mine = fit_rows[fit_rows["group"] == group]
        rows.append(
            [
                group,
                int((mine["store"] == "raw").sum()),
                int((mine["store"] != "raw").sum()),
                float(mine["weight"].sum() / total_weight) if total_weight else float("nan"),
                int((val_rows["group"] == group).sum()),
            ]
        )
    return rows


def report_context(
    params: Params, fit_rows: pd.DataFrame, val_rows: pd.DataFrame, history: list[dict], summary: dict
) -> dict:
    settings = params.train
    epochs = [stats["epoch"] for stats in history]
    best = summary["best_epoch"]
    charts = [
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
    verdict = Verdict()
    if summary["epochs_run"] < settings.epochs:
        verdict.warnings.append(
            f"stopped early after {summary['epochs_run']} of {settings.epochs} epochs: no lower validation "
            f"loss for train.patience = {settings.patience} epochs"
        )
    elif best == summary["epochs_run"] and summary["epochs_run"] > 1:
        verdict.warnings.append(
            f"the best epoch is the last ({best}): validation loss was still falling; "
            "more train.epochs may help"
        )
    return {
        "settings": settings,
        "seed": params.seed,
        "verdict": verdict,
        "headline": [
            ("epochs run", summary["epochs_run"]),
            ("best epoch", best),
            ("best val accuracy", summary["best_val_accuracy"]),
            ("best val loss", summary["best_val_loss"]),
        ],
        "speed": [
            ("device", summary["device"]),
            ("images per second", round(summary["images_per_second"])),
            ("training seconds", f"{summary['train_seconds']:.1f}"),
        ],
        "charts": charts,
        "epoch_rows": [
            [
                stats["epoch"],
                stats["train_loss"],
                stats["train_accuracy"],
                stats["val_loss"],
                stats["val_accuracy"],
                "best" if stats["epoch"] == best else "",
            ]
            for stats in history
        ],
        "group_rows": _group_rows(fit_rows, val_rows),
        "n_fit": len(fit_rows),
        "n_val": len(val_rows),
        "settings_rows": [[key, json.dumps(value)] for key, value in settings.model_dump().items()],
        "digest": params_digest(settings),
    }


if __name__ == "__main__":
    sys.exit(guarded(main))

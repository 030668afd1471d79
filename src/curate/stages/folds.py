"""folds: out-of-sample K-fold predictions for the train rows, the expensive half of cleaning.

Reads ``data/raw``; writes into ``data/clean/``: ``pred_probs.npy`` (train rows x classes,
sorted class order, each row predicted by the fold model that never saw it), ``folds.npy`` (the
fold in which each train row was held out), ``embeddings.npy`` and ``embedder.pt`` (one shared
model, whose embeddings drive the duplicate and outlier checks and augment's drift check), and
``environment.json`` (the torch build, CPU kernels and threads that computed them).

A stage of its own, apart from ``clean``, so that what only changes how the predictions are
read (cleanlab's filter, the action, the reports) re-runs no training: this module imports
neither cleanlab's filters nor the report kit.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from curate import label_issues
from curate.dataset import (
    EMBEDDER,
    EMBEDDINGS,
    ENVIRONMENT,
    FOLD_OF_ROW,
    PRED_PROBS,
    RAW_DIR,
    class_names,
    read_images,
    read_samples,
    write_array,
    write_lineage,
    write_text,
)
from curate.params import load_params
from curate.stage import guarded, stage_parser

INPUT = RAW_DIR / "samples.parquet"
IMAGES = RAW_DIR / "images.npy"


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("folds", __doc__).parse_args(argv)
    params = load_params(args.params)
    settings = params.clean
    samples = read_samples(INPUT)
    images = read_images(IMAGES)
    names = class_names(samples)
    train = samples[samples["split"] == "train"]
    label_issues.check_class_sizes(train["label"].to_numpy(), names, settings.folds)
    # torch loads only once the inputs have passed their checks: a bad input fails fast.
    from curate.checkpoint import POLARITY_KEY, save_checkpoint
    from curate.model import environment, pick_device

    started = time.perf_counter()
    device = pick_device(settings.device, key=f"{args.params}: clean.device")
    polarity = params.image.normalize_polarity
    predictions = label_issues.out_of_sample_predictions(
        np.asarray(images[train["row"].to_numpy()]),
        train["label"].to_numpy(),
        (train["group"] + ":" + train["label_name"]).to_numpy(),
        folds=settings.folds,
        training=label_issues.FoldTraining(
            n_classes=len(names),
            model_name=settings.model,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            seed=params.seed,
            polarity=polarity,
        ),
        device=device,
    )
    seconds = time.perf_counter() - started
    write_array(PRED_PROBS, predictions.pred_probs)
    write_array(FOLD_OF_ROW, predictions.folds)
    write_array(EMBEDDINGS, predictions.embeddings)
    meta = {"name": settings.model, "n_classes": len(names), "class_names": names, POLARITY_KEY: polarity}
    meta |= {"channels": int(images.shape[3]), "size": int(images.shape[1])}
    save_checkpoint(EMBEDDER, predictions.embedder, meta)
    write_text(ENVIRONMENT, json.dumps(environment(device), indent=2, sort_keys=True) + "\n")
    write_lineage("folds")
    print(
        f"folds: {settings.folds} models, out-of-sample predictions for {len(train):,} train samples "
        f"in {seconds:.1f} s on {device}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(guarded(main))

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
from typing import TYPE_CHECKING

import numpy as np

from curate import distributed, fold_training
from curate.dataset import (
    EMBEDDER,
    EMBEDDINGS,
    ENVIRONMENT,
    FOLD_OF_ROW,
    IMAGE_STORES,
    PRED_PROBS,
    RAW_DIR,
    class_names,
    image_rows,
    read_images,
    read_samples,
    write_array,
    write_lineage,
    write_text,
)
from curate.params import Params, load_params
from curate.stage import guarded, stage_parser

if TYPE_CHECKING:
    import torch

    from curate.model_choice import Backbone

INPUT = RAW_DIR / "samples.parquet"
IMAGES = IMAGE_STORES["raw"]


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("folds", __doc__).parse_args(argv)
    params = load_params(args.params)
    settings = params.clean
    samples = read_samples(INPUT)
    images = read_images(IMAGES)
    names = class_names(samples)
    train = samples[samples["split"] == "train"]
    fold_training.check_class_sizes(train["label"].to_numpy(), names, settings.folds)
    # torch loads only once the inputs have passed their checks: a bad input fails fast.
    from curate.checkpoint import EMBEDDER_META, checkpoint_meta, save_checkpoint
    from curate.devices import environment, pick_device
    from curate.model_choice import Backbone

    backbone = Backbone.from_params(settings, "clean")
    backbone.resolved_input_size()  # a model choice that does not go together stops here
    started = time.perf_counter()
    device = pick_device(settings.device, key=f"{args.params}: clean.device")
    polarity = params.image.normalize_polarity
    if settings.nproc > 1 and settings.method == "folds" and not distributed.launched():
        # The folds spread over clean.nproc processes: this one waits for torchrun's.
        return distributed.relaunch("curate.stages.folds", settings.nproc, argv)
    # The train rows, read from the memory-mapped store fold by fold and batch by batch.
    rows, labels = image_rows(train, {"raw": IMAGES}), train["label"].to_numpy()
    strata = (train["group"] + ":" + train["label_name"]).to_numpy()
    if settings.method == "embeddings":
        predictions = frozen_embeddings(rows, labels, strata, params, backbone, len(names), device)
    else:
        predictions = fold_training.out_of_sample_predictions(
            rows,
            labels,
            strata,
            folds=settings.folds,
            training=fold_training.FoldTraining(
                n_classes=len(names),
                backbone=backbone,
                epochs=settings.epochs,
                batch_size=settings.batch_size,
                lr=settings.lr,
                seed=params.seed,
                polarity=polarity,
                augment=settings.augment,
                ensemble=settings.ensemble,
                min_steps=settings.min_steps,
            ),
            device=device,
        )
    if predictions is None:
        return 0  # another rank of clean.nproc: rank 0 writes the outputs
    seconds = time.perf_counter() - started
    write_array(PRED_PROBS, predictions.pred_probs)
    write_array(FOLD_OF_ROW, predictions.folds)
    write_array(EMBEDDINGS, predictions.embeddings)
    meta = checkpoint_meta(backbone.meta(), names, images.shape, polarity, EMBEDDER_META)
    save_checkpoint(EMBEDDER, predictions.embedder, meta)
    write_text(ENVIRONMENT, json.dumps(environment(device), indent=2, sort_keys=True) + "\n")
    write_lineage("folds")
    embedded = settings.method == "embeddings"
    how = f"{settings.model} embeddings + logistic regression" if embedded else "models"
    print(
        f"folds: {settings.folds} {how}, out-of-sample predictions for {len(train):,} train samples "
        f"in {seconds:.1f} s on {device}"
    )
    return 0


def frozen_embeddings(
    rows: np.ndarray,
    labels: np.ndarray,
    strata: np.ndarray,
    params: Params,
    backbone: Backbone,
    n_classes: int,
    device: torch.device,
) -> fold_training.FoldPredictions:
    """``clean.method: embeddings``: the backbone as ``clean.weights`` / ``init_weights`` start it,
    frozen, and an out-of-fold logistic regression on its features
    (:func:`curate.fold_training.embedding_predictions`)."""
    import torch

    settings = params.clean
    if settings.weights == "none" and not settings.init_weights:
        print(
            "folds: clean.method embeddings with clean.weights none: the features are a random "
            "network's, expect weak detection (clean.weights: imagenet, or clean.init_weights)"
        )
    torch.manual_seed(params.seed)  # the head's init, and the body's when no weights are loaded
    net = backbone.initial_model(n_classes, int(rows.shape[3]), int(rows.shape[1]))
    return fold_training.embedding_predictions(
        rows,
        labels,
        strata,
        net=net,
        folds=settings.folds,
        seed=params.seed,
        polarity=params.image.normalize_polarity,
        device=device,
        batch_size=settings.batch_size,
    )


if __name__ == "__main__":
    sys.exit(guarded(main))

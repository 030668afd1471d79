"""folds: out-of-sample K-fold predictions for the train rows, the expensive half of cleaning.

Reads ``data/raw``; writes into ``data/folds/``: ``pred_probs.npy`` (train rows x classes,
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.data.atomic import write_array, write_text
from curate.data.image_rows import image_rows
from curate.data.lineage import Lineage
from curate.data.paths import EMBEDDER, EMBEDDINGS, ENVIRONMENT, FOLD_OF_ROW, PRED_PROBS, RAW_IMAGES
from curate.data.samples import RawInputs, read_raw
from curate.learning import distributed, fold_training
from curate.params import Params, load_params
from curate.stage import Stage, guarded, stage_parser

STAGE = Stage(
    "folds",
    metrics=(),
)

if TYPE_CHECKING:
    import torch

    from curate.learning.model_choice import Backbone


@dataclass
class Folded:
    """The out-of-sample predictions and what computed them."""

    predictions: fold_training.FoldPredictions  # pred_probs, fold_of_row, embeddings (train rows), embedder
    meta: dict[str, Any]  # the embedder's checkpoint meta
    environment: dict[str, Any]  # torch build, CPU kernels, threads: the floats depend on them
    seconds: float  # measured: the K-fold training and prediction


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("folds", __doc__).parse_args(argv)
    params = load_params(args.params)
    settings, lineage = params.folds, Lineage()
    inputs = read_raw()
    lineage.input_files(inputs.files)
    fold_training.check_class_sizes(inputs.train["label"].to_numpy(), inputs.class_names, settings.k)
    # torch loads only once the inputs have passed their checks: a bad input fails fast.
    from curate.learning.checkpoint import save_checkpoint
    from curate.learning.devices import pick_device
    from curate.learning.model_choice import Backbone

    backbone = Backbone.from_params(settings, "folds")
    backbone.resolved_input_size()  # a model choice that does not go together stops here
    device = pick_device(settings.device, key=f"{args.params}: folds.device")
    if settings.nproc > 1 and settings.method == "folds" and not distributed.launched():
        # The folds spread over folds.nproc processes: this one waits for torchrun's.
        return distributed.relaunch("curate.stages.folds", settings.nproc, argv)
    if settings.init_weights:
        lineage.input(settings.init_weights)
    result = compute(params, inputs, backbone, device)
    if result is None:
        return 0  # another rank of folds.nproc: rank 0 writes the outputs
    write_array(lineage.output(PRED_PROBS), result.predictions.pred_probs)
    write_array(lineage.output(FOLD_OF_ROW), result.predictions.fold_of_row)
    write_array(lineage.output(EMBEDDINGS), result.predictions.embeddings)
    save_checkpoint(lineage.output(EMBEDDER), result.predictions.embedder, result.meta)
    described = json.dumps(report_context(params, result), indent=2, sort_keys=True) + "\n"
    write_text(lineage.output(ENVIRONMENT), described)
    lineage.record("folds", run=STAGE.record(params))
    figures = metrics(result)
    embedded = settings.method == "embeddings"
    how = f"{settings.model} embeddings + logistic regression" if embedded else "models"
    print(
        f"folds: {settings.k} {how}, out-of-sample predictions for {figures['n_train']:,} train samples "
        f"in {figures['seconds']:.1f} s on {device}"
    )
    return 0


def compute(params: Params, inputs: RawInputs, backbone: Backbone, device: torch.device) -> Folded | None:
    """The K-fold (or frozen-embedding) predictions for the train rows; None on a rank other than 0."""
    settings, train, class_names = params.folds, inputs.train, inputs.class_names
    started = time.perf_counter()
    # The train rows, read from the memory-mapped store fold by fold and batch by batch.
    rows, labels = image_rows(train, {"raw": RAW_IMAGES}), train["label"].to_numpy()
    strata = (train["group"] + ":" + train["label_name"]).to_numpy()
    if settings.method == "embeddings":
        predictions = frozen_embeddings(rows, labels, strata, params, backbone, len(class_names), device)
    else:
        training = fold_settings(params, backbone, len(class_names))
        predictions = fold_training.out_of_sample_predictions(
            rows, labels, strata, k=settings.k, training=training, device=device
        )
    if predictions is None:
        return None
    seconds = time.perf_counter() - started
    from curate.learning.checkpoint import EMBEDDER_META, checkpoint_meta
    from curate.learning.devices import environment

    polarity = params.image.normalize_polarity
    meta = checkpoint_meta(backbone.meta(), class_names, inputs.images.shape, polarity, EMBEDDER_META)
    return Folded(predictions, meta, environment(device), seconds)


def fold_settings(params: Params, backbone: Backbone, n_classes: int) -> fold_training.FoldTraining:
    """The ``folds`` params as each fold's training takes them."""
    settings = params.folds
    return fold_training.FoldTraining(
        n_classes=n_classes,
        backbone=backbone,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=params.seed,
        polarity=params.image.normalize_polarity,
        augment=settings.augment,
        ensemble=settings.ensemble,
        min_steps=settings.min_steps,
    )


def metrics(result: Folded) -> dict[str, float]:
    """Not DVC metrics (folds has no report; clean judges its predictions): the run line's figures."""
    return {"n_train": len(result.predictions.pred_probs), "seconds": result.seconds}


def report_context(params: Params, result: Folded) -> dict[str, Any]:
    """What clean's report shows of this stage: the environment that computed the predictions
    (``environment.json``)."""
    return result.environment


def frozen_embeddings(
    rows: np.ndarray,
    labels: np.ndarray,
    strata: np.ndarray,
    params: Params,
    backbone: Backbone,
    n_classes: int,
    device: torch.device,
) -> fold_training.FoldPredictions:
    """``folds.method: embeddings``: the backbone as ``folds.weights`` / ``init_weights`` start it,
    frozen, and an out-of-fold logistic regression on its features
    (:func:`curate.learning.fold_training.embedding_predictions`)."""
    import torch

    settings = params.folds
    if settings.weights == "none" and not settings.init_weights:
        print(
            "folds: folds.method embeddings with folds.weights none: the features are a random "
            "network's, expect weak detection (folds.weights: imagenet, or folds.init_weights)"
        )
    torch.manual_seed(params.seed)  # the head's init, and the body's when no weights are loaded
    net = backbone.initial_model(n_classes, int(rows.shape[3]), int(rows.shape[1]))
    return fold_training.embedding_predictions(
        rows,
        labels,
        strata,
        net=net,
        k=settings.k,
        seed=params.seed,
        polarity=params.image.normalize_polarity,
        device=device,
        batch_size=settings.batch_size,
    )


if __name__ == "__main__":
    sys.exit(guarded(main))

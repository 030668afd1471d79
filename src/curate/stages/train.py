"""train: ``data/augmented/samples.parquet`` -> ``models/model.pt`` + DVCLive curves + the run record.

Trains the classifier (``train.model``) on the train rows in play: the originals kept by
clean and their augmented copies, each repeated ``copies`` times (resampling) and
weighted by ``weight`` (rebalancing) through a weighted loss or a weighted sampler
(``train.weighting``). A validation split of ``train.val_fraction`` of the original train
rows, stratified by group x label, is held out together with every augmented copy of
those rows, so no copy of a validation image is trained on. The checkpoint keeps the
epoch with the lowest validation loss; ``train.patience`` epochs without a new lowest
stop training early.

Outputs: ``models/model.pt`` (state_dict + meta, loadable with ``weights_only=True``),
``dvclive/train/`` (per-epoch TSVs: train/val loss and accuracy) and ``models/train.json`` (the
run record the ``train_report`` stage turns into its report: per-epoch stats, the summary, the rows by
group, the environment). A stage of its own so that a report's edit re-runs no training: this
module does not import the report kit. Everything is a function of the inputs, the params and
the seed on the CPU except the throughput figures (seconds, images per second), which are measured.

The images are never gathered into one copy here: ``train`` reads the rows from the raw and the
augmented stores (:class:`curate.data.image_rows.ImageRows`), whole onto the device or batch by batch
(``train.data_on_device``). With ``train.nproc`` above 1 the stage relaunches itself under
torchrun and trains with DistributedDataParallel (:mod:`curate.learning.distributed`); rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from curate.data.image_rows import ImageRows, image_rows, store_files
from curate.data.inputs import require_columns
from curate.data.lineage import Lineage
from curate.data.paths import AUGMENTED_DIR, MODEL, RUN_RECORD
from curate.data.samples import class_names_of, read_samples
from curate.data.splits import stratified_test_mask, training_rows
from curate.errors import CurateError
from curate.learning import distributed
from curate.learning.run_record import RunRecord, Summary
from curate.params import Params, TrainParams, load_params
from curate.stage import Stage, guarded, stage_parser

STAGE = Stage(
    "train",
    metrics=(),
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from curate.learning.training import FitConfig

INPUT = AUGMENTED_DIR / "samples.parquet"
LIVE_DIR = Path("dvclive/train")
REQUIRED_COLUMNS = ("weight", "copies", "store", "parent_id")


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("train", __doc__).parse_args(argv)
    params = load_params(args.params)
    lineage = Lineage()
    split = load_split(read_samples(lineage.input(INPUT)), params, args.params)
    lineage.input_files(store_files(split.fit_rows) + store_files(split.val_rows))
    if params.train.init_weights:
        lineage.input(params.train.init_weights)

    # torch and the models load only past the input checks.
    from curate.learning.checkpoint import save_checkpoint
    from curate.learning.devices import pick_device

    device = pick_device(params.train.device, key=f"{args.params}: train.device")
    nproc = params.train.nproc
    if nproc > 1 and not distributed.launched():
        check_gpus(device, nproc, f"{args.params}: train.nproc")
        return distributed.relaunch("curate.stages.train", nproc, argv)
    with distributed.process_group(device.type) as ranks:
        device = distributed.rank_device(device, ranks, f"{args.params}: train.nproc")
        net = initial_model(params, split)
        with dvclive_epochs() if ranks.main else nullcontext(None) as log_epoch:
            result = compute(net, split, params, device, on_epoch=log_epoch, processes=ranks.world)
    if not ranks.main:
        return 0  # rank 0 writes the outputs
    save_checkpoint(lineage.output(MODEL), result.net, result.meta)
    report_context(params, result).write(lineage.output(RUN_RECORD))
    lineage.record("train", run=STAGE.record(params))
    figures = metrics(result)
    print(
        f"train: {figures['epochs_run']} epochs (best {figures['best_epoch']}, val accuracy "
        f"{figures['best_val_accuracy']:.4f}) on {figures['device']}, {figures['images_per_second']:,.0f} "
        f"images/s, {figures['train_seconds']:.1f} s"
    )
    return 0


def check_gpus(device: torch.device, nproc: int, key: str) -> None:
    """On CUDA, one GPU per process: stop before launching when there are fewer."""
    import torch

    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise CurateError(f"{key} = {nproc}, but this machine has {torch.cuda.device_count()} GPU(s)")


@dataclass
class Split:
    """The stage's checked inputs: the rows to fit and to validate on, with their images."""

    classes: list[str]  # (K,) class names by label
    fit_rows: pd.DataFrame  # train rows in play, expanded by copies
    val_rows: pd.DataFrame  # held-out original train rows
    images: ImageRows  # fit_rows' images, uint8 N x H x W x C, read from the stores on demand
    val_images: ImageRows  # val_rows' images


@dataclass
class Trained:
    """What :func:`compute` returns: the model to save, and all the report shows about its run."""

    net: nn.Module  # the model, at the weights of its best epoch
    meta: dict[str, Any]  # the checkpoint meta (see curate.learning.checkpoint)
    split: Split
    history: list[dict]  # per-epoch stats from curate.learning.training.fit
    summary: Summary
    environment: dict[str, object]  # what trained it: torch build, CPU kernels, threads, processes


def load_split(samples: pd.DataFrame, params: Params, params_file: str) -> Split:
    """Checks the table, splits off validation and reads both sets of images."""
    require_columns(samples, INPUT, REQUIRED_COLUMNS)
    class_names = class_names_of(samples)
    fraction = params.train.val_fraction
    fit_rows, val_rows = split_validation(samples, fraction, params.seed)
    if fit_rows.empty or val_rows.empty:
        raise CurateError(
            f"{params_file}: train.val_fraction = {fraction:g} leaves {len(fit_rows)} train and "
            f"{len(val_rows)} validation rows; both need at least one (more data or another fraction)"
        )
    return Split(class_names, fit_rows, val_rows, image_rows(fit_rows), image_rows(val_rows))


def split_validation(
    samples: pd.DataFrame, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(fit_rows, val_rows)`` from the train rows in play.

    Validation: ``val_fraction`` of the original (``store == 'raw'``) train rows, stratified by
    group x label. Their augmented copies (``parent_id``) are dropped, so no copy of a
    validation image is trained on. ``fit_rows`` are expanded by ``copies`` (a row of
    copies 3 appears three times; 0 leaves it out).

    Validation is unweighted: the natural mix of the data. Weighted by the rebalance weights,
    a small group's few held-out rows carry a large part of the validation loss, and the best
    epoch picked on that is noise (measured on the demo: benchmarks/README.md). Rows whose label
    clean doubts (``label_weight`` under 1: flags held by the audit, or ``clean.action: weight``)
    never validate, they train at their weight: at 30% noise, early stopping on their given labels
    picked epoch 2 of 20 and the model scored 0.65 (``benchmarks/efficacy.py --audit``).
    """
    train = training_rows(samples)
    originals = train[train["store"] == "raw"]
    if "label_weight" in originals.columns:
        originals = originals[originals["label_weight"].to_numpy() >= 1]
    strata = originals["group"].astype(str) + ":" + originals["label"].astype(str)
    held_out = stratified_test_mask(strata.tolist(), val_fraction, seed)
    val_ids = set(originals["sample_id"][held_out])
    is_val = train["sample_id"].isin(val_ids).to_numpy()
    is_val_copy = train["parent_id"].isin(val_ids).to_numpy()
    val_rows = train[is_val]
    fit_rows = train[~is_val & ~is_val_copy]
    fit_rows = fit_rows.iloc[np.repeat(np.arange(len(fit_rows)), fit_rows["copies"].to_numpy())]
    return fit_rows, val_rows


def initial_model(params: Params, split: Split) -> nn.Module:
    """The untrained network: seeded init, then ``train.init_weights`` when given, else the
    ImageNet weights with ``train.weights: imagenet`` (:class:`curate.learning.model_choice.Backbone`)."""
    import torch

    from curate.learning.model_choice import Backbone

    images = split.images
    torch.manual_seed(params.seed)  # weight init
    return Backbone.from_params(params.train, "train").initial_model(
        len(split.classes), images.shape[3], images.shape[1]
    )


@contextmanager
def dvclive_epochs() -> Iterator[Callable[[dict], None]]:
    """A DVCLive run in :data:`LIVE_DIR`; yields the ``on_epoch`` callback that logs each epoch."""
    from dvclive import Live  # imported late: a heavy import, and not needed to check inputs

    with Live(dir=str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False, report=None) as live:

        def log_epoch(stats: dict) -> None:
            # timestamp=False: the TSVs are a function of the run, not of the clock.
            for split in ("train", "val"):
                live.log_metric(f"{split}/loss", stats[f"{split}_loss"], timestamp=False)
                live.log_metric(f"{split}/accuracy", stats[f"{split}_accuracy"], timestamp=False)
            live.next_step()

        yield log_epoch


def fit_config(params: Params, device: torch.device, processes: int = 1) -> FitConfig:
    """``train``'s params (and ``image.normalize_polarity``) as :func:`curate.learning.training.fit` takes
    them;
    ``processes``: the ranks training together (DDP when more than 1)."""
    from curate.learning.training import FitConfig

    settings = params.train
    return FitConfig(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=params.seed,
        device=device,
        polarity=params.image.normalize_polarity,
        weighting=settings.weighting,
        augment=settings.online_augment,
        patience=settings.patience,
        compile=settings.compile,
        data_on_device=settings.data_on_device,
        distributed=processes > 1,
    )


def compute(
    net: nn.Module,
    split: Split,
    params: Params,
    device: torch.device,
    on_epoch: Callable[[dict], None] | None = None,
    processes: int = 1,
) -> Trained:
    """Trains ``net`` in place on ``split`` as ``params.train`` says, the rows weighted per
    ``train.weighting``; ``on_epoch`` receives each epoch's stats as they come. ``processes``
    above 1: this is one rank of a torch.distributed group training ``net`` together."""
    from curate.learning.checkpoint import MODEL_META, checkpoint_meta
    from curate.learning.devices import environment
    from curate.learning.model_choice import Backbone
    from curate.learning.training import fit

    settings = params.train
    history = fit(
        net,
        split.images,
        split.fit_rows["label"].to_numpy(),
        fit_config(params, device, processes),
        sample_weights=split.fit_rows["weight"].to_numpy(dtype=np.float64),
        validation=(split.val_images, split.val_rows["label"].to_numpy(), None),
        on_epoch=on_epoch,
        progress="train",
    )
    network = Backbone.from_params(settings, "train").meta()
    polarity, digest = params.image.normalize_polarity, params_digest(settings)
    meta = checkpoint_meta(
        network, split.classes, split.images.shape, polarity, MODEL_META, params_digest=digest
    )
    described = environment(device) | ({"processes": processes} if processes > 1 else {})
    return Trained(net, meta, split, history, summarise(history, device.type), described)


def params_digest(settings: TrainParams) -> str:
    """SHA-256 of the train section as sorted JSON: which params built this checkpoint."""
    text = json.dumps(settings.model_dump(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def summarise(history: list[dict], device: str) -> Summary:
    best = min(history, key=lambda stats: stats["val_loss"])
    seconds = sum(stats["seconds"] for stats in history)
    images = sum(stats["images"] for stats in history)
    return Summary(
        epochs_run=len(history),
        best_epoch=best["epoch"],
        best_val_loss=best["val_loss"],
        best_val_accuracy=best["val_accuracy"],
        device=device,
        train_seconds=seconds,
        images_per_second=images / seconds if seconds > 0 else float("nan"),
    )


def metrics(result: Trained) -> dict[str, object]:
    """Not DVC metrics (train has no report; train_report reports its run): the run line's figures."""
    return asdict(result.summary)


def report_context(params: Params, result: Trained) -> RunRecord:
    """All the train_report stage shows about this run: its run record (``models/train.json``)."""
    split = result.split
    return RunRecord(
        history=result.history,
        summary=result.summary,
        group_rows=_group_rows(split.fit_rows, split.val_rows),
        n_fit=len(split.fit_rows),
        n_val=len(split.val_rows),
        digest=result.meta["params_digest"],
        environment=result.environment,
    )


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


if __name__ == "__main__":
    sys.exit(guarded(main))

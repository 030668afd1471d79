"""augment: ``data/balanced/samples.parquet`` -> ``data/augmented/`` (new images only) + report.

Makes ``augment.copies`` new images per chosen train sample with the torchvision v2
pipeline ``augment.transforms``, one random draw per image, and checks with a fixed
network (the folds stage's ``data/folds/embedder.pt``) how far the copies drift from
the originals. Which samples get copies (``augment.target``):

* ``all``: every train row still in play;
* ``groups_below_share``: the rows of groups whose share of the train weight is below
  ``augment.share_threshold``;
* ``by_weight``: copies in proportion to the rebalance weight (same budget as ``all``),
  so heavily up-weighted samples get variety instead of being repeated as they are.

Augmentation adds variety, not weight: a parent of weight ``w`` with ``k`` copies and
each copy get ``w / (1 + k)``, so every group's total weight is unchanged.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from curate.curation import augment_plan as plan
from curate.curation.augment_plan import build_pipeline
from curate.curation.drift import DriftCheck, distribution_check
from curate.data.image_rows import ImageRows, read_images, store_writer
from curate.data.inputs import check_image_shape, require_columns
from curate.data.lineage import Lineage
from curate.data.paths import AUGMENTED_DIR, BALANCED_DIR, EMBEDDER, IMAGE_STORES
from curate.data.samples import read_samples, write_samples
from curate.data.splits import training_rows
from curate.data.store import Store
from curate.params import AugmentParams, Params, load_params
from curate.report import Verdict, bar_chart, thumbnail
from curate.report.writer import write_stage
from curate.stage import Gate, Stage, guarded, stage_parser

STAGE = Stage(
    "augment",
    metrics=("frechet_distance",),
    view="data",
    gates={
        "max_frechet_distance": Gate("frechet_distance", "max"),
    },
)

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import v2

INPUT = BALANCED_DIR / "samples.parquet"
OUTPUT = AUGMENTED_DIR / "samples.parquet"
OUTPUT_IMAGES = IMAGE_STORES["augmented"]
PREVIEW_COPIES = 8  # copies shown beside each previewed original
AUGMENT_CHUNK = 1024  # copies made and written at a time: memory holds a chunk, not the set


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("augment", __doc__).parse_args(argv)
    params = load_params(args.params)
    lineage = Lineage()
    pipeline = build_pipeline(params, args.params)
    samples = read_samples(lineage.input(INPUT))
    require_columns(samples, INPUT, ("weight", "copies"))
    # torch loads only past the cheap input checks (the checkpoint and the model need it).
    from curate.learning.checkpoint import load_checkpoint, polarity_of
    from curate.learning.devices import pick_device
    from curate.learning.inference import predict

    embedder, meta = load_checkpoint(lineage.input(EMBEDDER))
    size, channels = params.image.size, params.image.channels
    check_image_shape(EMBEDDER, meta, (size, size, channels), "params image is")
    device = pick_device(params.augment.device, key=f"{args.params}: augment.device")

    def embed(images: np.ndarray) -> np.ndarray:
        # Fed as the folds stage trained it (the checkpoint says), whatever params.yaml says now.
        return predict(embedder, images, batch_size=512, device=device, polarity=polarity_of(meta))[1]

    raw = read_images(lineage.input(IMAGE_STORES["raw"]))
    result = compute(samples, raw, params, pipeline, embed, device, lineage.output(OUTPUT_IMAGES), meta)
    write_samples(lineage.output(OUTPUT), result.table)
    sizes = write_stage(STAGE, params, metrics(result), report_context(params, result), lineage)
    print(
        f"augment: {result.n_new:,} new images from {result.n_augmented_parents:,} samples; "
        f"reports/augment.html {sizes['html']:,} bytes"
    )
    return 0


@dataclass
class Augmented:
    parents: pd.DataFrame  # the train rows in play, table order: the candidates for copies
    parent_images: ImageRows  # (P, H, W, C) uint8, the parents' images, read on demand
    n_copies: np.ndarray  # (P,) new images per parent
    new_images: ImageRows  # (N, H, W, C) uint8, N = n_copies.sum(), a parent's copies together
    table: pd.DataFrame  # every input row (train weights split) then one row per new image
    drift: DriftCheck
    batched: list[bool]  # per transform step: one batched kernel, or a v2 call per image
    embedder: Mapping[str, Any]  # the fixed network's checkpoint meta

    @property
    def n_new(self) -> int:
        return int(self.n_copies.sum())

    @property
    def n_augmented_parents(self) -> int:
        return int((self.n_copies > 0).sum())


def compute(
    samples: pd.DataFrame,
    raw: Store,
    params: Params,
    pipeline: list[v2.Transform],
    embed: Callable[[ImageRows], np.ndarray],
    device: torch.device | str,
    target: Path,
    embedder: Mapping[str, Any],
) -> Augmented:
    """New images for the train rows in play of ``samples``, streamed into the store ``target``;
    their table, and the drift check.

    ``raw``: the store the parents' rows point into. The copies are stored ordered by their
    parent's row, then copy index (:func:`~curate.curation.augment_plan.store_order`), and cut
    on their ids. ``embed``: ``N x H x W x C`` uint8 images (read on demand) -> ``N x D``
    features from a fixed network, whose checkpoint meta is ``embedder``.
    """
    from curate.curation.augmentation import batched_kernel, sample_keys  # torch: only when run

    parents = training_rows(samples)
    n_copies = plan.copies_per_parent(parents, params.augment)
    source, copy_index = plan.copy_sources(n_copies)
    parent_ids, parent_rows = parents["sample_id"].to_numpy()[source], parents["row"].to_numpy()[source]
    keys = sample_keys(params.seed, parent_ids, copy_index)
    order = plan.store_order(parent_rows, copy_index)
    cut_keys = plan.copy_ids(parent_ids, copy_index)
    store_rows = _make_copies(raw, parent_rows, keys, cut_keys, order, pipeline, device, target, params)
    stores = {"augmented": read_images(target), "raw": raw}  # codes 0, 1 (sorted names)
    parent_images = ImageRows(stores, np.ones(len(parents), dtype=np.int64), parents["row"].to_numpy())
    new_images = ImageRows(stores, np.zeros(len(source), dtype=np.int64), store_rows)
    # Features from the fixed network: originals (all train rows in play), then the new images.
    both = ImageRows(
        stores,
        np.concatenate([parent_images.store_of, new_images.store_of]),
        np.concatenate([parent_images.rows, store_rows]),
    )
    features = embed(both)
    original, new = features[: len(parents)], features[len(parents) :]
    return Augmented(
        parents=parents,
        parent_images=parent_images,
        n_copies=n_copies,
        new_images=new_images,
        table=plan.augmented_table(
            samples, parents, n_copies, source, copy_index, plan.recipe(params), store_rows
        ),
        drift=distribution_check(original, new, parents["group"].to_numpy(), source),
        batched=[batched_kernel(t) is not None for t in pipeline],
        embedder=embedder,
    )


def _make_copies(
    raw: Store,
    parent_rows: np.ndarray,
    keys: np.ndarray,
    cut_keys: list[str],
    order: np.ndarray,
    pipeline: list[v2.Transform],
    device: torch.device | str,
    target: Path,
    params: Params,
) -> np.ndarray:
    """Make the copies a chunk at a time and stream them into the store ``target`` in ``order``;
    each copy's row in the store."""
    from curate.curation.augmentation import augment  # torch: only when run

    writing = store_writer(target, raw.row_shape, params.ingest.segment_mb)
    with writing as writer, tqdm(total=len(order), desc="augment", unit="img", disable=None) as bar:
        for start in range(0, len(order), AUGMENT_CHUNK):
            chunk = order[start : start + AUGMENT_CHUNK]
            made = augment(
                raw.take(parent_rows[chunk]), keys[chunk], pipeline, device=device, progress=bar.update
            )
            writer.append(made.reshape(len(chunk), *raw.row_shape), [cut_keys[i] for i in chunk])
    store_rows = np.empty(len(order), dtype=np.int64)
    store_rows[order] = np.arange(len(order))
    return store_rows


def metrics(result: Augmented) -> dict[str, float]:
    return {
        "n_augmented": result.n_new,
        "n_parents": result.n_augmented_parents,
        "frechet_distance": result.drift.frechet,
        "diversity_gain": result.drift.gain,
    }


def report_context(params: Params, result: Augmented) -> dict[str, Any]:
    """What the augment templates show."""
    settings, drift, embedder = params.augment, result.drift, result.embedder
    after = training_rows(result.table)
    group_rows = plan.group_summary(result.parents, result.n_copies, after)
    class_rows = plan.class_summary(result.parents, result.table, after)
    return {
        "settings": settings,
        "max_frechet_distance": params.gates.max_frechet_distance,
        "embedder": {key: embedder[key] for key in ("name", "n_classes", "channels", "size")},
        "verdict": _verdict(settings, params.gates.max_frechet_distance, result),
        "headline": [
            ("train originals", len(result.parents)),
            ("samples augmented", result.n_augmented_parents),
            ("new images", result.n_new),
            ("Frechet distance", drift.frechet),
            ("diversity gain", drift.gain),
        ],
        "group_rows": group_rows,
        "class_rows": class_rows,
        "diversity_rows": [group.row() for group in drift.groups],
        "diversity_overall": [drift.diversity_before, drift.diversity_after, drift.gain],
        "charts": _charts(group_rows, class_rows),
        "preview": _preview(result, settings.preview),
        "steps": _steps(plan.applied_specs(params), result.batched),
        "image_size": params.image.size,
    }


def _charts(group_rows: list[list], class_rows: list[list]) -> list[str]:
    return [
        bar_chart(
            [f"{row[0]}" for row in group_rows],
            {"before": [row[1] for row in group_rows], "after": [row[4] for row in group_rows]},
            key="augment-groups",
            ylabel="train images",
            title="Train images by group, before and after",
        ),
        bar_chart(
            [row[0] for row in class_rows],
            {"before": [row[1] for row in class_rows], "after": [row[3] for row in class_rows]},
            key="augment-classes",
            ylabel="train images",
            title="Train images by class, before and after",
        ),
    ]


def _steps(specs: list[dict[str, Any]], batched: list[bool]) -> list[list]:
    return [
        [
            i,
            spec["name"],
            json.dumps(spec["args"], sort_keys=True),
            "batched, per-sample parameters" if fast else "per sample (v2 call per image)",
        ]
        for i, (spec, fast) in enumerate(zip(specs, batched, strict=True))
    ]


def _verdict(settings: AugmentParams, max_frechet: float | None, result: Augmented) -> Verdict:
    verdict = Verdict()
    if settings.copies == 0:
        verdict.warnings.append("augment.copies is 0: pass-through, no new images")
    elif not result.n_copies.any():
        verdict.warnings.append(
            f"no sample was chosen under augment.target = {settings.target}: no new images"
        )
    # The gate judges the overall figure. A small group's copies can drift while that figure,
    # dominated by a large group, stays low: each group is held to the same threshold here.
    # NaN (nothing made) compares False, so it never warns.
    for group in result.drift.groups:
        if max_frechet is not None and group.frechet > max_frechet:
            verdict.warnings.append(
                f"group {group.group}: Frechet distance {group.frechet:.3f} between originals and their "
                f"copies is over gates.max_frechet_distance = {max_frechet:g}: the transforms move images "
                "off the data distribution (see the preview); make them milder"
            )
    return verdict


def _preview(result: Augmented, count: int) -> list[dict[str, Any]]:
    """``count`` augmented originals, taken from the groups in turn, each beside its copies."""
    parents, n_copies = result.parents, result.n_copies
    first_copy = np.cumsum(n_copies) - n_copies
    rows = []
    for i in plan.preview_parents(parents["group"].to_numpy(), n_copies, count):
        parent = parents.iloc[i]
        copies = range(first_copy[i], first_copy[i] + min(n_copies[i], PREVIEW_COPIES))
        original = {"uri": thumbnail(result.parent_images[i]), "caption": "original", "title": parent["path"]}
        rows.append(
            {
                "label": f"class {parent['label_name']} / {parent['group']} / {parent['sample_id']}",
                "items": [original]
                + [
                    {
                        "uri": thumbnail(result.new_images[j]),
                        "caption": f"a{j - first_copy[i] + 1}",
                        "title": f"copy {j - first_copy[i] + 1} of {n_copies[i]}",
                    }
                    for j in copies
                ],
            }
        )
    return rows


if __name__ == "__main__":
    sys.exit(guarded(main))

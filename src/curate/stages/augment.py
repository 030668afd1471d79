"""augment: ``data/balanced/samples.parquet`` -> ``data/augmented/`` (new images only) + report.

Makes ``augment.copies`` new images per chosen train sample with the torchvision v2
pipeline ``augment.transforms``, one random draw per image, and checks with a fixed
network (the folds stage's ``data/clean/embedder.pt``) how far the copies drift from
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

from curate.data.image_rows import ImageRows, read_images, store_writer
from curate.data.inputs import check_image_shape, require_columns
from curate.data.lineage import Lineage
from curate.data.paths import AUGMENTED_DIR, BALANCED_DIR, EMBEDDER, IMAGE_STORES
from curate.data.samples import class_names_of, read_samples, write_samples
from curate.data.splits import training_rows
from curate.data.store import Store
from curate.errors import CurateError
from curate.params import AugmentParams, Params, load_params
from curate.report import Verdict, bar_chart, thumbnail
from curate.report.writer import write_stage
from curate.stage import Gate, Stage, guarded, stage_parser

STAGE = Stage(
    "augment",
    metrics=("frechet_distance",),
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


@dataclass(frozen=True)
class GroupDrift:
    """One group's drift check, in the embedder's feature space (scaled as in :class:`DriftCheck`)."""

    group: str
    n_originals: int  # its train rows in play
    n_new: int  # its new images
    frechet: float  # its parents (once per copy) vs their copies; NaN under 2 new images
    diversity_before: float  # mean pairwise distance among its originals
    diversity_after: float  # mean pairwise distance among its originals and copies

    @property
    def gain(self) -> float:
        return _gain(self.diversity_before, self.diversity_after)

    def row(self) -> list:
        return [
            self.group, self.n_originals, self.n_new, self.frechet,
            self.diversity_before, self.diversity_after, self.gain,
        ]  # fmt: skip


@dataclass(frozen=True)
class DriftCheck:
    """How far the new images drift from their parents, overall and per group."""

    frechet: float  # all parents (once per copy) vs all new images; NaN under 2 new images
    groups: list[GroupDrift]  # sorted by group
    diversity_before: float  # over all originals
    diversity_after: float  # over all originals and new images

    @property
    def gain(self) -> float:
        return _gain(self.diversity_before, self.diversity_after)


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
    parent's row, then copy index, and cut on their ids: a copy is a function of (seed, parent,
    copy index), so an unchanged parent's copies are the same segment bytes in the next version.
    ``embed``: ``N x H x W x C`` uint8 images (read on demand) -> ``N x D`` features from a fixed network,
    whose checkpoint meta is ``embedder``.
    """
    from curate.curation.augmentation import batched_kernel, sample_keys  # torch: only when run

    parents = training_rows(samples)
    n_copies = copies_per_parent(parents, params.augment)
    source = np.repeat(np.arange(len(parents)), n_copies)
    copy_index = _copy_index(n_copies)
    parent_ids, parent_rows = parents["sample_id"].to_numpy()[source], parents["row"].to_numpy()[source]
    keys = sample_keys(params.seed, parent_ids, copy_index)
    cut_keys = [f"{pid}~a{k}" for pid, k in zip(parent_ids, copy_index, strict=True)]
    order = np.lexsort((copy_index, parent_rows))
    store_rows = _make_copies(raw, parent_rows, keys, cut_keys, order, pipeline, device, target, params)
    stores = {"augmented": Store(target, "augment"), "raw": raw}  # codes 0, 1 (sorted names)
    parent_images = ImageRows(stores, np.ones(len(parents), dtype=np.int64), parents["row"].to_numpy())
    new_images = ImageRows(stores, np.zeros(len(source), dtype=np.int64), store_rows)
    # Features from the fixed network: originals (all train rows in play), then the new images.
    both = ImageRows(
        stores,
        np.concatenate([parent_images.store_of, new_images.store_of]),
        np.concatenate([parent_images.rows, store_rows]),
    )
    features = embed(both)
    return Augmented(
        parents=parents,
        parent_images=parent_images,
        n_copies=n_copies,
        new_images=new_images,
        table=augmented_table(samples, parents, n_copies, source, copy_index, recipe(params), store_rows),
        drift=distribution_check(
            features[: len(parents)], features[len(parents) :], parents, n_copies, source
        ),
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


def build_pipeline(params: Params, params_file: str | Path) -> list[v2.Transform]:
    """The v2 transforms of ``augment.transforms``, each checked to keep the image shape and dtype."""
    from curate.curation.augmentation import build_transform, check_preserves_image  # torch: only when run

    shape = (params.image.channels, params.image.size, params.image.size)
    pipeline = []
    for index, spec in enumerate(params.augment.transforms):
        try:  # params checked the names; the values only show when torchvision builds the step
            transform = build_transform(spec.name, spec.args, params.image.size)
        except Exception as exc:  # noqa: BLE001  (torchvision raises TypeError, ValueError, ...)
            detail = " ".join(str(exc).split())
            raise CurateError(
                f"{params_file}: augment.transforms[{index}].args: {spec.name}(**args) fails: {detail}"
            ) from None
        problem = check_preserves_image(transform, shape)
        if problem:
            hint = " (leave size out: it is image.size)" if "size" in spec.args else ""
            raise CurateError(f"{params_file}: augment.transforms[{index}]: {spec.name} {problem}{hint}")
        pipeline.append(transform)
    return pipeline


def applied_specs(params: Params) -> list[dict[str, Any]]:
    """``augment.transforms`` as applied: each ``{"name", "args"}`` with the arguments filled
    from ``image`` (a left-out ``size`` is ``image.size``), so a recipe says exactly what ran."""
    from curate.curation.augmentation import effective_args  # torch: only when run

    size = params.image.size
    return [
        {"name": spec.name, "args": effective_args(spec.name, spec.args, size)}
        for spec in params.augment.transforms
    ]


def recipe(params: Params) -> str:
    """The transform pipeline as applied (:func:`applied_specs`), as compact, key-sorted JSON:
    the same text for the same params and image size."""
    return json.dumps(applied_specs(params), sort_keys=True, separators=(",", ":"))


def copies_per_parent(parents: pd.DataFrame, settings: AugmentParams) -> np.ndarray:
    """How many new images each train row gets, per ``augment.target`` (int array, table order)."""
    n = len(parents)
    if settings.copies == 0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    mass = (parents["weight"] * parents["copies"]).to_numpy(dtype=float)
    if settings.target == "all":
        return np.full(n, settings.copies, dtype=np.int64)
    if settings.target == "groups_below_share":
        share = pd.Series(mass, index=parents.index).groupby(parents["group"]).transform("sum") / mass.sum()
        return np.where(share.to_numpy() < settings.share_threshold, settings.copies, 0).astype(np.int64)
    # by_weight: the budget of "all" (copies x rows), shared in proportion to the training
    # mass; largest remainders (ties to the earlier row) make the integer total exact.
    expected = settings.copies * n * mass / mass.sum()
    counts = np.floor(expected).astype(np.int64)
    short = settings.copies * n - counts.sum()
    order = np.argsort(-(expected - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def _copy_index(n_copies: np.ndarray) -> np.ndarray:
    """1, 2, ..., k for each parent with k copies, concatenated."""
    starts = np.repeat(np.cumsum(n_copies) - n_copies, n_copies)
    return np.arange(n_copies.sum()) - starts + 1


def augmented_table(
    samples: pd.DataFrame,
    parents: pd.DataFrame,
    n_copies: np.ndarray,
    source: np.ndarray,
    copy_index: np.ndarray,
    recipe_text: str,
    store_rows: np.ndarray,
) -> pd.DataFrame:
    """Every input row (``store='raw'`` unless set) with split weights, then one row per new image
    (its row in the augmented store: ``store_rows``)."""
    passed = samples.copy()
    if "store" not in passed.columns:
        passed["store"] = "raw"
    passed["parent_id"] = pd.Series(pd.NA, index=passed.index, dtype="string")
    passed["recipe"] = pd.Series(pd.NA, index=passed.index, dtype="string")
    share = pd.Series(1.0 / (1 + n_copies), index=parents.index)
    passed.loc[parents.index, "weight"] = passed.loc[parents.index, "weight"] * share

    new = parents.iloc[source].copy()
    new["parent_id"] = new["sample_id"].astype("string")
    new["sample_id"] = [f"{pid}~a{k}" for pid, k in zip(new["parent_id"], copy_index, strict=True)]
    new["store"] = "augmented"
    new["row"] = store_rows.astype(passed["row"].dtype)
    new["split"] = "train"
    new["copies"] = 1
    new["weight"] = parents["weight"].to_numpy()[source] / (1 + n_copies[source])
    new["recipe"] = recipe_text
    return pd.concat([passed, new], ignore_index=True)[passed.columns]


def distribution_check(
    original: np.ndarray, new: np.ndarray, parents: pd.DataFrame, n_copies: np.ndarray, source: np.ndarray
) -> DriftCheck:
    """Frechet distance (parents vs their copies) and per-group diversity before and after.

    Features are divided by the root of the originals' total variance first, so the
    distance is in units of the originals' spread and ``gates.max_frechet_distance`` does
    not depend on the embedder's scale: 0 means the same mean and covariance.
    """
    from curate.curation.augmentation import frechet_distance, mean_pairwise_distance  # torch: only when run

    total_variance = np.trace(np.atleast_2d(np.cov(original, rowvar=False))) if len(original) > 1 else 1.0
    scale = max(float(np.sqrt(total_variance)), 1e-12)
    original, new = original / scale, new / scale
    # Each parent counts once per copy it has, so the two sides have the same mix of groups
    # and classes and the distance measures the transforms, not the targeting.
    parents_used = original[source]
    groups = parents["group"].to_numpy()
    new_groups = groups[source]
    drifts = []
    for group in sorted(set(groups)):
        mine, theirs = new_groups == group, groups == group
        drifts.append(
            GroupDrift(
                group=group,
                n_originals=int(theirs.sum()),
                n_new=int(mine.sum()),
                frechet=frechet_distance(parents_used[mine], new[mine]) if mine.sum() > 1 else float("nan"),
                diversity_before=mean_pairwise_distance(original[theirs]),
                diversity_after=mean_pairwise_distance(np.concatenate([original[theirs], new[mine]])),
            )
        )
    return DriftCheck(
        frechet=frechet_distance(parents_used, new) if len(new) > 1 else float("nan"),
        groups=drifts,
        diversity_before=mean_pairwise_distance(original),
        diversity_after=mean_pairwise_distance(np.concatenate([original, new])),
    )


def _gain(before: float, after: float) -> float:
    return after / before if before > 0 else float("nan")


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
    group_rows = _group_rows(result, after)
    class_rows = _class_rows(result, after)
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
        "steps": _steps(applied_specs(params), result.batched),
        "image_size": params.image.size,
    }


def _group_rows(result: Augmented, after: pd.DataFrame) -> list[list]:
    """Per group: originals, samples augmented, new images, total after, weight before and after."""
    parents = result.parents
    count_before = parents.groupby("group").size()
    count_after = after.groupby("group").size()
    weight_before = parents.groupby("group")["weight"].sum()
    weight_after = after.groupby("group")["weight"].sum()
    chosen = pd.Series(result.n_copies, index=parents.index)
    return [
        [
            g,
            int(count_before.get(g, 0)),
            int((chosen[parents["group"] == g] > 0).sum()),
            int(chosen[parents["group"] == g].sum()),
            int(count_after.get(g, 0)),
            float(weight_before.get(g, 0.0)),
            float(weight_after.get(g, 0.0)),
        ]
        for g in sorted(parents["group"].unique())
    ]


def _class_rows(result: Augmented, after: pd.DataFrame) -> list[list]:
    """Per class: train images before, added, after."""
    before = result.parents.groupby("label_name").size()
    after_counts = after.groupby("label_name").size()
    return [
        [
            name,
            int(before.get(name, 0)),
            int(after_counts.get(name, 0)) - int(before.get(name, 0)),
            int(after_counts.get(name, 0)),
        ]
        for name in class_names_of(result.table)
    ]


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
    for i in _preview_parents(parents, n_copies, count):
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


def _preview_parents(parents: pd.DataFrame, n_copies: np.ndarray, count: int) -> list[int]:
    """Positions of up to ``count`` parents with copies, taken from the groups in turn.

    Evenly spaced within each group, since tables are often sorted by class.
    """
    by_group = [
        list(np.flatnonzero((parents["group"] == g).to_numpy() & (n_copies > 0)))
        for g in sorted(parents["group"].unique())
    ]
    spread = [[q[int(j)] for j in np.linspace(0, len(q) - 1, min(len(q), count))] for q in by_group]
    return [
        i
        for turn in zip(*[(q + [None] * count)[:count] for q in spread], strict=True)
        for i in turn
        if i is not None
    ][:count]


if __name__ == "__main__":
    sys.exit(guarded(main))

"""augment: ``data/balanced/samples.parquet`` -> ``data/augmented/`` (new images only) + report.

Makes ``augment.copies`` new images per chosen train sample with the torchvision v2
pipeline ``augment.transforms``, one random draw per image, and checks with a fixed
network (the clean stage's ``data/clean/embedder.pt``) how far the copies drift from
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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from torchvision.transforms import v2
from tqdm import tqdm

from curate.augmentation import (
    augment,
    batched_kernel,
    build_transform,
    check_preserves_image,
    frechet_distance,
    mean_pairwise_distance,
    sample_keys,
)
from curate.checkpoint import load_checkpoint
from curate.cli import guarded, stage_parser
from curate.dataset import (
    AUGMENTED_DIR,
    BALANCED_DIR,
    CLEAN_DIR,
    class_names,
    gather_images,
    read_samples,
    training_rows,
    write_images,
    write_samples,
)
from curate.errors import CurateError
from curate.gates import show_gates
from curate.params import AugmentParams, Params, load_params
from curate.report import Verdict, bar_chart, thumbnail, write_report

INPUT = BALANCED_DIR / "samples.parquet"
EMBEDDER = CLEAN_DIR / "embedder.pt"
PREVIEW_COPIES = 8  # copies shown beside each previewed original


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("augment", __doc__).parse_args(argv)
    params = load_params(args.params)
    settings = params.augment
    pipeline = build_pipeline(params, args.params)
    samples = read_samples(INPUT)
    for column in ("weight", "copies"):
        if column not in samples.columns:
            raise CurateError(f"{INPUT}: missing column {column!r} (written by the rebalance stage)")
    model, meta = load_checkpoint(EMBEDDER)
    image = params.image
    if (meta["channels"], meta["size"]) != (image.channels, image.size):
        raise CurateError(
            f"{EMBEDDER}: built for {meta['size']} px x {meta['channels']} channels, but params image is "
            f"{image.size} px x {image.channels} channels (re-run the clean stage: dvc repro)"
        )

    parents = training_rows(samples)
    n_copies = copies_per_parent(parents, settings)
    parent_images = gather_images(parents)
    source = np.repeat(np.arange(len(parents)), n_copies)
    copy_index = _copy_index(n_copies)
    keys = sample_keys(params.seed, parents["sample_id"].to_numpy()[source], copy_index)

    from curate.model import pick_device, predict  # torch models only past the input checks

    device = pick_device()
    with tqdm(total=len(source), desc="augment", unit="img", disable=None) as bar:
        new_images = augment(parent_images[source], keys, pipeline, device=device, progress=bar.update)
    new_images = new_images.reshape(len(source), image.size, image.size, image.channels)
    table = augmented_table(samples, parents, n_copies, source, copy_index, recipe(settings))

    # Features from the fixed network: originals (all train rows in play) and the new images.
    features = predict(model, np.concatenate([parent_images, new_images]), batch_size=512, device=device)[1]
    check = distribution_check(features[: len(parents)], features[len(parents) :], parents, n_copies, source)

    write_images(AUGMENTED_DIR / "images.npy", new_images)
    write_samples(AUGMENTED_DIR / "samples.parquet", table)
    context = report_context(params, pipeline, parents, table, parent_images, new_images, n_copies, check)
    context["embedder"] = {key: meta[key] for key in ("name", "n_classes", "channels", "size")}
    stage_metrics = metrics(check, n_copies)
    context = show_gates(context, params.gates, "augment", stage_metrics)
    sizes = write_report("augment", context, stage_metrics)
    print(
        f"augment: {len(source):,} new images from {int((n_copies > 0).sum()):,} samples; "
        f"reports/augment.html {sizes['html']:,} bytes"
    )
    return 0


def build_pipeline(params: Params, params_file: str | Path) -> list[v2.Transform]:
    """The v2 transforms of ``augment.transforms``, each checked to keep the image shape and dtype."""
    shape = (params.image.channels, params.image.size, params.image.size)
    pipeline = []
    for index, spec in enumerate(params.augment.transforms):
        transform = build_transform(spec.name, spec.args)
        problem = check_preserves_image(transform, shape)
        if problem:
            raise CurateError(f"{params_file}: augment.transforms[{index}]: {spec.name} {problem}")
        pipeline.append(transform)
    return pipeline


def recipe(settings: AugmentParams) -> str:
    """The transform pipeline as compact, key-sorted JSON: the same text for the same params."""
    specs = [spec.model_dump() for spec in settings.transforms]
    return json.dumps(specs, sort_keys=True, separators=(",", ":"))


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
) -> pd.DataFrame:
    """Every input row (``store='raw'`` unless set) with split weights, then one row per new image."""
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
    new["row"] = np.arange(len(new), dtype=passed["row"].dtype)
    new["split"] = "train"
    new["copies"] = 1
    new["weight"] = parents["weight"].to_numpy()[source] / (1 + n_copies[source])
    new["recipe"] = recipe_text
    return pd.concat([passed, new], ignore_index=True)[passed.columns]


def distribution_check(
    original: np.ndarray, new: np.ndarray, parents: pd.DataFrame, n_copies: np.ndarray, source: np.ndarray
) -> dict:
    """Frechet distance (parents vs their copies) and per-group diversity before and after.

    Features are divided by the root of the originals' total variance first, so the
    distance is in units of the originals' spread and ``augment.max_frechet`` does not
    depend on the embedder's scale: 0 means the same mean and covariance.
    """
    total_variance = np.trace(np.atleast_2d(np.cov(original, rowvar=False))) if len(original) > 1 else 1.0
    scale = max(float(np.sqrt(total_variance)), 1e-12)
    original, new = original / scale, new / scale
    # Each parent counts once per copy it has, so the two sides have the same mix of groups
    # and classes and the distance measures the transforms, not the targeting.
    parents_used = original[source]
    frechet = frechet_distance(parents_used, new) if len(new) > 1 else float("nan")
    groups = parents["group"].to_numpy()
    new_groups = groups[source]
    rows = []
    for group in sorted(set(groups)):
        before = mean_pairwise_distance(original[groups == group])
        after = mean_pairwise_distance(np.concatenate([original[groups == group], new[new_groups == group]]))
        mine = new_groups == group
        rows.append(
            [
                group,
                int((groups == group).sum()),
                int(mine.sum()),
                frechet_distance(parents_used[mine], new[mine]) if mine.sum() > 1 else float("nan"),
                before,
                after,
                after / before if before > 0 else float("nan"),
            ]
        )
    before = mean_pairwise_distance(original)
    after = mean_pairwise_distance(np.concatenate([original, new]))
    return {
        "frechet": frechet,
        "diversity_rows": rows,
        "diversity_before": before,
        "diversity_after": after,
        "diversity_gain": after / before if before > 0 else float("nan"),
    }


def metrics(check: dict, n_copies: np.ndarray) -> dict:
    return {
        "n_augmented": int(n_copies.sum()),
        "n_parents": int((n_copies > 0).sum()),
        "frechet_distance": check["frechet"],
        "diversity_gain": check["diversity_gain"],
    }


def report_context(
    params: Params,
    pipeline: list[v2.Transform],
    parents: pd.DataFrame,
    table: pd.DataFrame,
    parent_images: np.ndarray,
    new_images: np.ndarray,
    n_copies: np.ndarray,
    check: dict,
) -> dict:
    settings = params.augment
    after = training_rows(table)
    groups = sorted(parents["group"].unique())
    names = class_names(table)
    count_before = parents.groupby("group").size()
    count_after = after.groupby("group").size()
    weight_before = parents.groupby("group")["weight"].sum()
    weight_after = after.groupby("group")["weight"].sum()
    chosen = pd.Series(n_copies, index=parents.index)
    group_rows = [
        [
            g,
            int(count_before.get(g, 0)),
            int((chosen[parents["group"] == g] > 0).sum()),
            int(chosen[parents["group"] == g].sum()),
            int(count_after.get(g, 0)),
            float(weight_before.get(g, 0.0)),
            float(weight_after.get(g, 0.0)),
        ]
        for g in groups
    ]
    by_class_before = parents.groupby("label_name").size()
    by_class_after = after.groupby("label_name").size()
    class_rows = [
        [
            n,
            int(by_class_before.get(n, 0)),
            int(by_class_after.get(n, 0)) - int(by_class_before.get(n, 0)),
            int(by_class_after.get(n, 0)),
        ]
        for n in names
    ]
    chart = bar_chart(
        [f"{g}" for g in groups],
        {
            "before": [int(count_before.get(g, 0)) for g in groups],
            "after": [int(count_after.get(g, 0)) for g in groups],
        },
        key="augment-groups",
        ylabel="train images",
        title="Train images by group, before and after",
    )
    class_chart = bar_chart(
        names,
        {"before": [r[1] for r in class_rows], "after": [r[3] for r in class_rows]},
        key="augment-classes",
        ylabel="train images",
        title="Train images by class, before and after",
    )
    return {
        "settings": settings,
        "verdict": _verdict(settings, check, n_copies),
        "headline": [
            ("train originals", len(parents)),
            ("samples augmented", int((n_copies > 0).sum())),
            ("new images", int(n_copies.sum())),
            ("Frechet distance", check["frechet"]),
            ("diversity gain", check["diversity_gain"]),
        ],
        "group_rows": group_rows,
        "class_rows": class_rows,
        "diversity_rows": check["diversity_rows"],
        "diversity_overall": [check["diversity_before"], check["diversity_after"], check["diversity_gain"]],
        "charts": [chart, class_chart],
        "preview": _preview(parents, parent_images, new_images, n_copies, settings.preview),
        "steps": [
            [
                i,
                spec.name,
                json.dumps(spec.args, sort_keys=True),
                "batched, per-sample parameters" if batched_kernel(t) else "per sample (v2 call per image)",
            ]
            for i, (spec, t) in enumerate(zip(settings.transforms, pipeline, strict=True))
        ],
    }


def _verdict(settings: AugmentParams, check: dict, n_copies: np.ndarray) -> Verdict:
    verdict = Verdict()
    if settings.copies == 0:
        verdict.warnings.append("augment.copies is 0: pass-through, no new images")
    elif not n_copies.any():
        verdict.warnings.append(
            f"no sample was chosen under augment.target = {settings.target}: no new images"
        )
    # A small group's copies can drift while the overall figure, dominated by a large
    # group, stays low: check each group too. NaN (nothing made) never warns.
    scopes = [("all train images", check["frechet"])] + [
        (f"group {r[0]}", r[3]) for r in check["diversity_rows"]
    ]
    for scope, frechet in scopes:
        if frechet == frechet and frechet > settings.max_frechet:
            verdict.warnings.append(
                f"{scope}: Frechet distance {frechet:.3f} between originals and their copies is over "
                f"augment.max_frechet = {settings.max_frechet:g}: the transforms move images off the "
                "data distribution (see the preview); make them milder"
            )
    return verdict


def _preview(parents, parent_images, new_images, n_copies, count: int) -> list[dict]:
    """``count`` augmented originals, taken from the groups in turn, each beside its copies."""
    first_copy = np.cumsum(n_copies) - n_copies
    by_group = [
        list(np.flatnonzero((parents["group"] == g).to_numpy() & (n_copies > 0)))
        for g in sorted(parents["group"].unique())
    ]
    # Evenly spaced within each group (tables are often sorted by class), groups in turn.
    spread = [[q[int(j)] for j in np.linspace(0, len(q) - 1, min(len(q), count))] for q in by_group]
    chosen = [
        i
        for turn in zip(*[(q + [None] * count)[:count] for q in spread], strict=True)
        for i in turn
        if i is not None
    ][:count]
    rows = []
    for i in chosen:
        parent = parents.iloc[i]
        copies = range(first_copy[i], first_copy[i] + min(n_copies[i], PREVIEW_COPIES))
        rows.append(
            {
                "label": f"class {parent['label_name']} / {parent['group']} / {parent['sample_id']}",
                "items": [
                    {"uri": thumbnail(parent_images[i]), "caption": "original", "title": parent["path"]}
                ]
                + [
                    {
                        "uri": thumbnail(new_images[j]),
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

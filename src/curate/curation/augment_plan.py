"""Which train rows get how many augmented copies, under which recipe, and the table that results.

Small pure functions, pandas and numpy in and out; torch is imported only by the two that
build or spell out the v2 transforms (:func:`build_pipeline`, :func:`applied_specs`), so the
augment stage loads without it. Shapes use

* ``P``: parents, the train rows in play (a table in the input's order);
* ``n_copies``: int array ``(P,)``, new images per parent;
* ``N = n_copies.sum()``: new images, a parent's copies together, in parent order;
* ``source``: int array ``(N,)``, each new image's parent (a position in ``[0, P)``);
* ``copy_index``: int array ``(N,)``, ``1..k`` within each parent's ``k`` copies.

Augmentation adds variety, not weight: a parent of weight ``w`` with ``k`` copies and each
copy get ``w / (1 + k)`` (:func:`augmented_table`), so every group's total weight is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from curate.data.samples import class_names_of
from curate.errors import CurateError
from curate.params import AugmentParams, Params

if TYPE_CHECKING:
    from torchvision.transforms import v2


def copies_per_parent(parents: pd.DataFrame, settings: AugmentParams) -> np.ndarray:
    """How many new images each train row gets, per ``augment.target``: int array ``(P,)``, table order.

    ``parents`` needs ``weight``, ``copies`` and ``group``: a row's training mass is weight x copies.
    """
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


def copy_sources(n_copies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(source, copy_index)``, both ``(N,)``: each new image's parent and its number among the
    parent's copies (1, 2, ..., k for a parent with k copies), a parent's copies together."""
    source = np.repeat(np.arange(len(n_copies)), n_copies)
    starts = np.repeat(np.cumsum(n_copies) - n_copies, n_copies)
    return source, np.arange(n_copies.sum()) - starts + 1


def copy_ids(parent_ids: Sequence[str], copy_index: Sequence[int]) -> list[str]:
    """The new images' sample ids ``(N,)``: ``<parent id>~a<copy index>``."""
    return [f"{pid}~a{k}" for pid, k in zip(parent_ids, copy_index, strict=True)]


def store_order(parent_rows: np.ndarray, copy_index: np.ndarray) -> np.ndarray:
    """The order ``(N,)`` the copies are stored in: by their parent's row, then copy index.

    A copy is a function of (seed, parent, copy index), so an unchanged parent's copies are
    the same bytes in the same place of the next version's store.
    """
    return np.lexsort((copy_index, parent_rows))


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
    (its row in the augmented store: ``store_rows`` ``(N,)``).

    ``parents`` are rows of ``samples`` (same index); the table has ``samples``' columns.
    """
    passed = samples.copy()
    if "store" not in passed.columns:
        passed["store"] = "raw"
    passed["parent_id"] = pd.Series(pd.NA, index=passed.index, dtype="string")
    passed["recipe"] = pd.Series(pd.NA, index=passed.index, dtype="string")
    share = pd.Series(1.0 / (1 + n_copies), index=parents.index)
    passed.loc[parents.index, "weight"] = passed.loc[parents.index, "weight"] * share

    new = parents.iloc[source].copy()
    new["parent_id"] = new["sample_id"].astype("string")
    new["sample_id"] = copy_ids(new["parent_id"], copy_index)
    new["store"] = "augmented"
    new["row"] = store_rows.astype(passed["row"].dtype)
    new["split"] = "train"
    new["copies"] = 1
    new["weight"] = parents["weight"].to_numpy()[source] / (1 + n_copies[source])
    new["recipe"] = recipe_text
    return pd.concat([passed, new], ignore_index=True)[passed.columns]


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


def group_summary(parents: pd.DataFrame, n_copies: np.ndarray, after: pd.DataFrame) -> list[list]:
    """Per group, sorted: originals, samples augmented, new images, train rows after, weight
    before and after. ``after``: the augmented table's train rows in play."""
    count_before = parents.groupby("group").size()
    count_after = after.groupby("group").size()
    weight_before = parents.groupby("group")["weight"].sum()
    weight_after = after.groupby("group")["weight"].sum()
    chosen = pd.Series(n_copies, index=parents.index)
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


def class_summary(parents: pd.DataFrame, table: pd.DataFrame, after: pd.DataFrame) -> list[list]:
    """Per class of ``table`` (the augmented table): train images before, added, after
    (``after``: its train rows in play)."""
    before = parents.groupby("label_name").size()
    after_counts = after.groupby("label_name").size()
    return [
        [
            name,
            int(before.get(name, 0)),
            int(after_counts.get(name, 0)) - int(before.get(name, 0)),
            int(after_counts.get(name, 0)),
        ]
        for name in class_names_of(table)
    ]


def preview_parents(groups: np.ndarray, n_copies: np.ndarray, count: int) -> list[int]:
    """Positions of up to ``count`` parents with copies, taken from the groups in turn.

    ``groups`` ``(P,)``: each parent's group. Evenly spaced within each group, since tables
    are often sorted by class.
    """
    by_group = [list(np.flatnonzero((groups == g) & (n_copies > 0))) for g in sorted(pd.unique(groups))]
    spread = [[q[int(j)] for j in np.linspace(0, len(q) - 1, min(len(q), count))] for q in by_group]
    return [
        i
        for turn in zip(*[(q + [None] * count)[:count] for q in spread], strict=True)
        for i in turn
        if i is not None
    ][:count]

"""Which rows are test and which train: a table's split, made once by ingest, and the train rows
still in play after clean."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd


def stratified_test_mask(strata: Sequence[str], test_fraction: float, seed: int) -> np.ndarray:
    """Mark ``round(test_fraction * n)`` rows of each stratum as test, reproducibly under ``seed``.

    Done by hand rather than with scikit-learn so that strata of one sample
    stay in train instead of failing the whole split.
    """
    strata = pd.Series(list(strata))
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(strata), dtype=bool)
    for _, rows in sorted(strata.groupby(strata).groups.items()):
        chosen = rng.permutation(np.asarray(rows))[: round(test_fraction * len(rows))]
        is_test[chosen] = True
    return is_test


def keyed_test_mask(
    strata: Sequence[str], keys: Sequence[str], test_fraction: float, seed: int
) -> np.ndarray:
    """Mark ``round(test_fraction * n)`` rows of each stratum as test: those whose key hashes
    lowest under ``seed``.

    A row's rank depends on its own key, not on the other rows, so a data set that grows keeps
    its split: adding ``k`` rows to a stratum moves at most ``k + 1`` of its old rows between
    train and test, where a permutation of the stratum (:func:`stratified_test_mask`) deals every
    row anew. Test rows of one version stay out of the next one's training, and figures of two
    versions compare. Keys are unique within a stratum (a path).
    """
    salt = f"{seed}\0".encode()
    ranks = np.array([hashlib.sha256(salt + key.encode()).digest()[:8] for key in keys], dtype="S8")
    frame = pd.DataFrame({"stratum": list(strata), "rank": ranks, "key": list(keys)})
    is_test = np.zeros(len(frame), dtype=bool)
    for _, rows in frame.groupby("stratum", sort=True):
        ordered = rows.sort_values(["rank", "key"]).index.to_numpy()
        is_test[ordered[: round(test_fraction * len(rows))]] = True
    return is_test


def training_rows(samples: pd.DataFrame) -> pd.DataFrame:
    """The train rows still in play: split ``train`` and not dropped by the clean stage."""
    in_train = samples["split"] == "train"
    if "action" in samples.columns:
        in_train &= samples["action"] != "drop"
    return samples[in_train]

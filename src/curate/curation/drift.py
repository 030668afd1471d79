"""How far augmented images drift from their originals, in a fixed network's feature space.

Small pure functions, numpy in and out (no torch: the features come in as arrays). Shapes use

* ``P``: originals (the train rows in play), ``N``: new images, ``D``: feature dimensions;
* ``original``: float array ``(P, D)``, ``new``: float array ``(N, D)``;
* ``groups``: array ``(P,)`` of each original's group name;
* ``source``: int array ``(N,)``, each new image's original (a position in ``[0, P)``).

The Frechet distance compares Gaussians fitted to the two sides (FID's formula, on any
embedder's features); the mean pairwise distance measures diversity, before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to features ``a`` (N x D) and ``b`` (M x D).

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. The trace of the matrix square
    root is taken as the sum of square roots of the eigenvalues of ``S_a^(1/2) S_b S_a^(1/2)``
    (symmetric, same spectrum as ``S_a S_b``), with tiny negative eigenvalues from
    round-off clipped to 0: stable where ``scipy.linalg.sqrtm`` goes complex on
    rank-deficient covariances (fewer samples than feature dimensions).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    mean_gap = float(np.sum((a.mean(0) - b.mean(0)) ** 2))
    return max(0.0, mean_gap + float(np.trace(cov_a) + np.trace(cov_b) - 2 * cross))


def mean_pairwise_distance(features: np.ndarray, max_points: int = 1500, seed: int = 0) -> float:
    """Mean Euclidean distance over all pairs of rows of ``features`` ``(n, D)`` (a fixed random
    subset past ``max_points``); NaN under 2 rows."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) > max_points:
        features = features[np.random.default_rng(seed).choice(len(features), max_points, replace=False)]
    if len(features) < 2:
        return float("nan")
    squared = (features**2).sum(1)
    d2 = np.clip(squared[:, None] + squared[None, :] - 2 * features @ features.T, 0, None)
    upper = np.triu_indices(len(features), k=1)
    return float(np.sqrt(d2[upper]).mean())


def diversity_gain(before: float, after: float) -> float:
    """``after / before``: how much more spread the new images add (NaN when ``before`` is not > 0)."""
    return after / before if before > 0 else float("nan")


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
        return diversity_gain(self.diversity_before, self.diversity_after)

    def row(self) -> list:
        """The report's row: group, originals, new, Frechet, diversity before, after, gain."""
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
        return diversity_gain(self.diversity_before, self.diversity_after)


def distribution_check(
    original: np.ndarray, new: np.ndarray, groups: np.ndarray, source: np.ndarray
) -> DriftCheck:
    """Frechet distance (parents vs their copies) and per-group diversity before and after.

    ``original`` ``(P, D)``, ``new`` ``(N, D)``: features of the originals and the new images;
    ``groups`` ``(P,)``: each original's group; ``source`` ``(N,)``: each new image's original.
    Features are divided by the root of the originals' total variance first, so the
    distance is in units of the originals' spread and ``gates.max_frechet_distance`` does
    not depend on the embedder's scale: 0 means the same mean and covariance.
    """
    total_variance = np.trace(np.atleast_2d(np.cov(original, rowvar=False))) if len(original) > 1 else 1.0
    scale = max(float(np.sqrt(total_variance)), 1e-12)
    original, new = original / scale, new / scale
    # Each parent counts once per copy it has, so the two sides have the same mix of groups
    # and classes and the distance measures the transforms, not the targeting.
    parents_used = original[source]
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

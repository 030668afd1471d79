"""The k-nearest-neighbour graph of the shared model's embeddings, built once per clean run: cleanlab's
Datalab reads it for its near-duplicate and outlier checks (``knn_graph=``) and
:func:`curate.curation.label_issues.knn_probs` for the kNN label evidence.

Handed ``features``, Datalab searches all pairs itself (0.9 s at 6,000 rows, 39 s at 48,000: four
times per doubling), and the kNN evidence searched again. Here one search serves both: exact
(scikit-learn's brute force in :data:`NEIGHBOUR_BLOCK_MB` blocks) up to :data:`EXACT_MAX_ROWS` rows,
approximate past it (a faiss HNSW index), or as ``clean.neighbour_search`` forces.

The graph is what cleanlab's ``create_knn_graph_and_index`` builds from features, so the issue
managers read it as their own: an N x N CSR matrix with the same number k of stored entries in
every row (they read ``data.reshape(N, -1)``), row i's k nearest other rows by distance in the
metric cleanlab's ``decide_default_metric`` picks for the features (cosine past 3 columns, else
euclidean), exact duplicates at distance 0 and among each other's neighbours
(``correct_knn_graph``: a set of more than k + 1 copies points at its first k + 1).

Deterministic: an HNSW graph depends on the order in which points link up, which threads race
for, so it is built on one thread (its level generator has a fixed seed); its search is
per query and runs on every thread. Either search only proposes candidates: their distances
are computed again here, in float64 the same way for both, sorted with ties broken by row
index, so the same embeddings give the same bytes, and the two searches the same graph wherever
they find the same neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix

SEARCHES = ("auto", "exact", "approximate")
# auto: exact search up to this many rows. Around here the two cost about the same on 2 cores
# (50,000 rows of 64-d: 10 s exact, 4 s to build the HNSW index and 4 s to search it); past it
# exact search grows with the square of the rows, approximate search a little over linearly.
EXACT_MAX_ROWS = 50_000
DATALAB_K = 10  # cleanlab's DEFAULT_K, the k of Datalab's near_duplicate and outlier checks
# scikit-learn working_memory for the exact search: distances are computed in blocks of this size
# (the default 1 GiB took clean's peak RSS from 0.65 to 1.8 GiB between 6,000 and 24,000 rows).
NEIGHBOUR_BLOCK_MB = 128
# HNSW: links per point, candidate list while building, and (at least) while searching. On
# 300,000 made-up 64-d embeddings (benchmarks/_synthetic.py fold_outputs) these find 98% of each
# row's 20 nearest; efSearch 48 finds 99% for 37% more search time, M 12 with efConstruction 24
# builds in 40% less time and finds 95%. Building, on one thread, is the larger cost at 1,000,000.
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 40, 32
DISTANCE_BLOCK = 8192  # rows whose candidates' distances are computed at once (~100 MB at k = 20)


@dataclass(frozen=True)
class Neighbours:
    """A kNN graph and how it was found."""

    graph: csr_matrix  # (N, N): k stored distances per row, nearest first, ties by index, self excluded
    metric: str  # cosine | euclidean: what Datalab would use for these features
    search: str  # exact | approximate
    why: str  # how the search was chosen, in words

    @property
    def k(self) -> int:
        return self.graph.nnz // self.graph.shape[0]

    def rows(self, k: int) -> np.ndarray:
        """(N, min(k, self.k)) each row's nearest other rows, nearest first."""
        return self.graph.indices.reshape(self.graph.shape[0], -1)[:, :k]

    def first(self, k: int) -> csr_matrix:
        """The graph of each row's first ``k`` neighbours (Datalab's outlier check averages every
        stored distance: it must get exactly its k)."""
        n, k = self.graph.shape[0], min(k, self.k)
        data = self.graph.data.reshape(n, -1)[:, :k].ravel()
        return csr_matrix((data, self.rows(k).ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def choose(n_rows: int, search: str) -> tuple[str, str]:
    """``(exact | approximate, why)`` for ``n_rows`` under ``clean.neighbour_search``."""
    if search != "auto":
        return search, f"clean.neighbour_search {search}"
    if n_rows <= EXACT_MAX_ROWS:
        return "exact", f"auto: {n_rows:,} rows, at most {EXACT_MAX_ROWS:,}"
    return "approximate", f"auto: {n_rows:,} rows, over {EXACT_MAX_ROWS:,}"


def build(features: np.ndarray, k: int, search: str = "auto") -> Neighbours:
    """The ``k`` nearest other rows of each row of ``features`` (N x D, N >= 2; k is cut to N - 1)."""
    from cleanlab.internal.neighbor.metric import decide_default_metric

    n = len(features)
    if n < 2 or search not in SEARCHES:
        raise ValueError(f"a neighbour graph needs 2 rows or more and a search in {SEARCHES}")
    k = min(k, n - 1)
    metric = "cosine" if decide_default_metric(features) == "cosine" else "euclidean"
    points = np.asarray(features, dtype=np.float64)
    if metric == "cosine":  # on unit vectors the euclidean order is the cosine order
        points = points / np.clip(np.linalg.norm(points, axis=1, keepdims=True), 1e-12, None)
    used, why = choose(n, search)
    if used == "exact":
        candidates = _exact(points, k + 1)
    else:
        candidates = _approximate(points, k + 1, metric)
        why += f": faiss HNSW, M {HNSW_M}, efSearch {max(HNSW_EF_SEARCH, k + 1)}"
    return Neighbours(_graph(points, candidates, Copies.of(features), k, metric), metric, used, why)


def _exact(points: np.ndarray, width: int) -> np.ndarray:
    """(N, width) each row's nearest rows, itself among them, by brute force in blocks."""
    import sklearn
    from sklearn.neighbors import NearestNeighbors

    data = points.astype(np.float32)
    with sklearn.config_context(working_memory=NEIGHBOUR_BLOCK_MB):
        search = NearestNeighbors(n_neighbors=width, algorithm="brute").fit(data)
        return search.kneighbors(data, return_distance=False)


def _approximate(points: np.ndarray, width: int, metric: str) -> np.ndarray:
    """(N, width) each row's nearest rows as an HNSW index finds them, -1 where it found fewer."""
    import faiss

    data = np.ascontiguousarray(points, dtype=np.float32)
    space = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    index = faiss.IndexHNSWFlat(data.shape[1], HNSW_M, space)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # the graph depends on the order points link up: one thread
    try:
        index.add(data)
    finally:
        faiss.omp_set_num_threads(threads)
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, width)
    return index.search(data, width)[1].astype(np.int64)


@dataclass(frozen=True)
class Copies:
    """The sets of identical rows (as bytes: only a -0.0 against a 0.0 tells two rows apart that
    cleanlab's ``np.unique(features, axis=0)`` calls equal; that takes 12 s at 1,000,000 x 64,
    a void view 3 s)."""

    set_of: np.ndarray  # (N,) each row's set of identical rows, -1 for a row with no copy
    members: np.ndarray  # the rows of every set, set by set, ascending within each
    start: np.ndarray  # a set's first position in members
    size: np.ndarray  # a set's number of rows

    @classmethod
    def of(cls, features: np.ndarray) -> Copies:
        data = np.ascontiguousarray(features)
        rows = data.view(np.dtype((np.void, data.dtype.itemsize * data.shape[1]))).ravel()
        _, set_of, size = np.unique(rows, return_inverse=True, return_counts=True)
        set_of = np.where(size[set_of.ravel()] > 1, set_of.ravel(), -1)
        copied = np.flatnonzero(set_of >= 0)
        members = copied[np.argsort(set_of[copied], kind="stable")]
        return cls(set_of, members, np.searchsorted(set_of[members], np.arange(len(size))), size)

    def first(self, sets: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """The ``rank``-th row of each of ``sets`` (-1 past its size)."""
        sets = np.maximum(sets, 0)
        inside = rank < self.size[sets]
        return np.where(inside, self.members[np.minimum(self.start[sets] + rank, len(self.members) - 1)], -1)


def _graph(points: np.ndarray, candidates: np.ndarray, copies: Copies, k: int, metric: str) -> csr_matrix:
    """The CSR graph of each row's ``k`` nearest ``candidates`` (-1: none; itself and repeats left
    out), by distance computed here, identical rows at 0, ties by index.

    Identical rows are equally near to any row, so which of a set the search returned is chance:
    they are replaced by the set's first rows, as many (:func:`_first_of_sets`). A row with copies
    gets its set's first k + 1 rows as candidates besides, as ``correct_knn_graph`` gives them.
    """
    n = len(points)
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float64)
    width = candidates.shape[1]
    for start in range(0, n, DISTANCE_BLOCK):
        rows = np.arange(start, min(n, start + DISTANCE_BLOCK))
        own = copies.set_of[rows][:, None]
        found = candidates[rows]
        if len(copies.members):
            found = _first_of_sets(found, copies, own)
            mine = copies.first(np.broadcast_to(own, (len(rows), width)), np.arange(width)[None, :])
            found = np.concatenate([found, np.where(own >= 0, mine, -1)], axis=1)
        valid = (found >= 0) & (found != rows[:, None])
        found = np.where(valid, found, rows[:, None])
        apart = _distances(points[rows], points[found], metric)
        apart[(own >= 0) & (copies.set_of[found] == own)] = 0.0
        apart[~valid] = np.inf
        order = np.lexsort((found, apart), axis=1)
        found, apart = np.take_along_axis(found, order, 1), np.take_along_axis(apart, order, 1)
        # A row of its own set both searched and added comes twice, side by side after the sort.
        apart[:, 1:][found[:, 1:] == found[:, :-1]] = np.inf
        order = np.argsort(apart, axis=1, kind="stable")[:, :k]
        indices[rows], distances[rows] = (
            np.take_along_axis(found, order, 1),
            np.take_along_axis(apart, order, 1),
        )
    if not np.isfinite(distances).all():
        raise RuntimeError(f"the neighbour search found fewer than {k} neighbours for some rows")
    return csr_matrix((distances.ravel(), indices.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def _first_of_sets(found: np.ndarray, copies: Copies, own: np.ndarray) -> np.ndarray:
    """``found`` (B x C) with the rows of each set of copies other than the row's own replaced by
    that set's first rows, as many as were found."""
    sets = np.where(found >= 0, copies.set_of[np.maximum(found, 0)], -1)
    other = (sets >= 0) & (sets != own)
    if not other.any():
        return found
    order = np.lexsort((found, sets), axis=1)
    ranked = np.take_along_axis(sets, order, 1)
    position = np.broadcast_to(np.arange(found.shape[1]), found.shape)
    new = np.ones(found.shape, dtype=bool)
    new[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    rank = np.empty_like(position)
    np.put_along_axis(rank, order, position - np.maximum.accumulate(np.where(new, position, 0), axis=1), 1)
    return np.where(other, copies.first(sets, rank), found)


def _distances(rows: np.ndarray, others: np.ndarray, metric: str) -> np.ndarray:
    """(B, C) distances from each of ``rows`` (B x D) to its ``others`` (B x C x D)."""
    if metric == "cosine":  # unit vectors: as scikit-learn's cosine_distances, clipped to [0, 2]
        return np.clip(1.0 - np.einsum("bd,bcd->bc", rows, others), 0.0, 2.0)
    apart = others - rows[:, None]
    return np.sqrt(np.einsum("bcd,bcd->bc", apart, apart))

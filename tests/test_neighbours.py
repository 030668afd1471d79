"""The kNN graph clean builds once (``curate.curation.neighbours``): the same bytes from the same
embeddings on the approximate path, the same findings as exact search and as Datalab's own search,
the label issues untouched by the search when no kNN evidence is mixed in, and the linear
near-duplicate sets equal to the loops they replaced."""

import io
import json
import shutil

import faiss
import numpy as np
import pandas as pd
import pytest

from benchmarks._synthetic import clean_project, fold_outputs
from curate.curation import label_issues, neighbours
from curate.stages import clean

OUTPUTS = (
    "data/clean/samples.parquet",
    "reports/clean.html",
    "reports/clean.md",
    "reports/metrics/clean.json",
    "reports/details/clean.json",
    "reports/lineage/clean.json",
)


def run_clean(folder, monkeypatch) -> dict[str, bytes]:
    monkeypatch.chdir(folder)
    assert clean.main([]) == 0
    return {path: (folder / path).read_bytes() for path in OUTPUTS}


@pytest.mark.full  # 22 s at 20,000 rows: beside `pytest` in CI, with the other long runs
def test_the_approximate_search_gives_the_same_bytes_twice(tmp_path, monkeypatch):
    # Past neighbours.EXACT_MAX_ROWS in size, forced anyway, with the kNN evidence mixed in so
    # that the label issues too depend on the graph.
    settings = {"clean": {"neighbour_search": "approximate", "knn_weight": 0.3}}
    clean_project(tmp_path / "first", 50_000, [settings])
    shutil.copytree(tmp_path / "first", tmp_path / "second")
    first, second = run_clean(tmp_path / "first", monkeypatch), run_clean(tmp_path / "second", monkeypatch)
    assert first == second
    details = json.loads(first["reports/details/clean.json"])
    assert (details["neighbour_search"], details["neighbour_k"]) == ("approximate", 20)
    assert (
        "found by approximate search (clean.neighbour_search approximate"
        in first["reports/clean.md"].decode()
    )


def test_the_search_threads_do_not_change_the_graph():
    embeddings = fold_outputs(4000, seed=2)["embeddings"]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # the search too runs on one thread
    try:
        one = neighbours.build(embeddings, 20, "approximate")
    finally:
        faiss.omp_set_num_threads(threads)
    every = neighbours.build(embeddings, 20, "approximate")
    assert np.array_equal(one.graph.indices, every.graph.indices)
    assert np.array_equal(one.graph.data, every.graph.data)


def test_exact_and_approximate_search_agree_with_datalab_on_planted_copies_and_outliers():
    from cleanlab import Datalab

    made = fold_outputs(3000, seed=1)
    exact = neighbours.build(made["embeddings"], 20, "exact")
    approximate = neighbours.build(made["embeddings"], 20, "approximate")
    assert (exact.search, approximate.search, exact.metric, exact.k) == ("exact", "approximate", "cosine", 20)
    same = (exact.rows(20) == approximate.rows(20)).all(axis=1)
    assert same.mean() > 0.95  # every one of 20 neighbours the same, in order
    checks = label_issues.duplicates_and_outliers(exact)
    found = label_issues.duplicates_and_outliers(approximate)
    flags = ["is_near_duplicate", "duplicate_set", "is_outlier"]
    pd.testing.assert_frame_equal(checks[flags], found[flags])
    # A score is the mean distance to the 10 nearest: the same wherever they are the same.
    ten = (exact.rows(10) == approximate.rows(10)).all(axis=1)
    assert np.array_equal(checks["outlier_score"][ten], found["outlier_score"][ten])
    copies = made["near_copy"] | made["exact_copy"]
    assert checks["is_near_duplicate"][copies].all() and checks["is_outlier"][made["outlier"]].all()
    # Identical rows sit at distance 0, first among each other's neighbours.
    assert (exact.graph.data.reshape(3000, -1)[made["exact_copy"], 0] == 0).all()
    # What Datalab finds when it searches the features itself.
    lab = Datalab(data={"row": np.arange(3000)}, verbosity=0)
    lab.find_issues(features=made["embeddings"], issue_types={"near_duplicate": {}, "outlier": {}})
    duplicates, outliers = lab.get_issues("near_duplicate"), lab.get_issues("outlier")
    assert np.array_equal(checks["is_near_duplicate"], duplicates["is_near_duplicate_issue"])
    own_sets = label_issues._set_ids(duplicates["near_duplicate_sets"].tolist())
    assert np.array_equal(checks["duplicate_set"], own_sets)
    assert np.array_equal(checks["is_outlier"], outliers["is_outlier_issue"])
    assert np.allclose(checks["outlier_score"], outliers["outlier_score"], rtol=1e-5)


def test_without_knn_evidence_the_search_leaves_the_label_issues_alone(tmp_path, monkeypatch):
    clean_project(tmp_path / "exact", 3000, [{"clean": {"neighbour_search": "exact", "knn_weight": 0.0}}])
    clean_project(
        tmp_path / "approximate", 3000, [{"clean": {"neighbour_search": "approximate", "knn_weight": 0.0}}]
    )
    tables = [
        pd.read_parquet(io.BytesIO(run_clean(tmp_path / search, monkeypatch)[OUTPUTS[0]]))
        for search in ("exact", "approximate")
    ]
    columns = ["is_label_issue", "label_quality", "predicted_label", "action", "label"]
    pd.testing.assert_frame_equal(tables[0][columns], tables[1][columns])


def loop_set_ids(neighbours_of: list) -> np.ndarray:
    """The union-find loop :func:`curate.curation.label_issues._set_ids` replaced."""
    parent = list(range(len(neighbours_of)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, others in enumerate(neighbours_of):
        for j in others:
            a, b = root(i), root(int(j))
            parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(len(neighbours_of))])
    return np.where([len(others) > 0 for others in neighbours_of], roots, -1)


def loop_extras(duplicate_set: np.ndarray, label_quality: np.ndarray) -> np.ndarray:
    """The per-set loop :func:`curate.curation.label_issues.duplicate_extras` replaced."""
    extras = np.zeros(len(duplicate_set), dtype=bool)
    for set_id in np.unique(duplicate_set[duplicate_set >= 0]):
        members = np.flatnonzero(duplicate_set == set_id)
        keeper = members[np.argmax(label_quality[members])]
        extras[members[members != keeper]] = True
    return extras


@pytest.mark.parametrize("seed", range(20))
def test_linear_sets_and_extras_equal_the_loops(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    # Lists as Datalab gives them (symmetric) and not (one-sided links, rows linked to but empty).
    neighbours_of = [rng.choice(n, size=rng.poisson(0.3), replace=True) for _ in range(n)]
    if seed % 2:
        for i, others in enumerate(list(neighbours_of)):
            for j in others:
                neighbours_of[j] = np.append(neighbours_of[j], i)
    sets = label_issues._set_ids(neighbours_of)
    assert np.array_equal(sets, loop_set_ids(neighbours_of))
    quality = rng.integers(0, 4, n) / 4  # ties: the first row of a set among equals stays
    assert np.array_equal(label_issues.duplicate_extras(sets, quality), loop_extras(sets, quality))
    random_sets = np.where(rng.random(n) < 0.5, rng.integers(0, 30, n), -1)
    assert np.array_equal(
        label_issues.duplicate_extras(random_sets, quality), loop_extras(random_sets, quality)
    )

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate import cli
from curate.curation import balance
from curate.data.samples import read_samples, write_samples
from curate.errors import CurateError
from curate.params import Params, RebalanceParams, load_params
from curate.report.render import read_figures
from curate.stages import rebalance
from tests.conftest import file_or_tree_bytes, set_params

BALANCED = "data/balanced/samples.parquet"
OUTPUTS = [
    BALANCED,
    "reports/rebalance.html",
    "reports/rebalance.md",
    "reports/metrics/rebalance.json",
    "reports/details/rebalance.json",
]


def clean_table(train, test=(), dropped=(), **extra_columns) -> pd.DataFrame:
    """A table as the clean stage writes it: ``train``/``test``/``dropped`` are (group, label) pairs."""
    rows = (
        [(g, y, "train", "keep") for g, y in train]
        + [(g, y, "train", "drop") for g, y in dropped]
        + [(g, y, "test", "none") for g, y in test]
    )
    n = len(rows)
    table = pd.DataFrame(
        {
            "sample_id": [f"s{i:04d}" for i in range(n)],
            "path": [f"{g}/{i:04d}" for i, (g, *_) in enumerate(rows)],
            "row": np.arange(n),
            "label": [y for _, y, *_ in rows],
            "label_name": [f"c{y}" for _, y, *_ in rows],
            "group": [g for g, *_ in rows],
            "split": [s for *_, s, _ in rows],
            "action": [a for *_, a in rows],
            "is_label_issue": [a == "drop" for *_, a in rows],
            "label_quality": np.full(n, 0.9),
            "predicted_label": [y for _, y, *_ in rows],
            "given_label": [y for _, y, *_ in rows],
        }
    )
    for name, values in extra_columns.items():
        table[name] = values
    return table


def run(workdir, table, **params) -> pd.DataFrame:
    """Write ``table`` as the clean output, run the stage with ``rebalance`` params, return its output.

    The hand-sized tables have groups of a few rows: ``min_group_size`` is 1 unless given.
    """
    write_samples(workdir / "data/clean/samples.parquet", table)
    set_params(workdir / "params.yaml", rebalance={"min_group_size": 1, **params})
    assert rebalance.main([]) == 0
    return read_samples(workdir / BALANCED).set_index("sample_id")


def metrics_of(workdir) -> dict:
    return read_figures("rebalance", workdir / "reports")  # the DVC metrics and the details


def outputs_bytes(root) -> dict:
    return {name: file_or_tree_bytes(root / name) for name in OUTPUTS}


# The tiny table: group a has labels 0, 0, 0, 1 and group b has 0, 1 (n = 6);
# one dropped train row and two test rows ride along.
TINY = clean_table(
    train=[("a", 0), ("a", 0), ("a", 0), ("a", 1), ("b", 0), ("b", 1)],
    dropped=[("b", 1)],
    test=[("a", 1), ("b", 0)],
)
TRAIN_IDS = [f"s{i:04d}" for i in range(6)]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # n / (G n_g): a 6 / (2 * 4), b 6 / (2 * 2).
        ({"strategy": "group"}, [0.75, 0.75, 0.75, 0.75, 1.5, 1.5]),
        # n_g n_y / (n n_gy): a0 4*4/(6*3), a1 4*2/6, b0 2*4/6, b1 2*2/6.
        ({"strategy": "group_label"}, [8 / 9, 8 / 9, 8 / 9, 4 / 3, 4 / 3, 2 / 3]),
        # n share_g / n_g: a 6 * 0.25 / 4, b 6 * 0.75 / 2.
        ({"strategy": "target", "target_shares": {"a": 0.25, "b": 0.75}}, [0.375] * 4 + [2.25] * 2),
        ({"strategy": "none"}, [1.0] * 6),
        # group, capped at 1.2: b's 1.5 is clipped, a rescaled to (6 - 2 * 1.2) / 4 = 0.9.
        ({"strategy": "group", "max_weight": 1.2}, [0.9] * 4 + [1.2] * 2),
    ],
)
def test_weights_match_hand_computed_values(workdir, params, expected):
    out = run(workdir, TINY, **params)
    np.testing.assert_allclose(out.loc[TRAIN_IDS, "weight"], expected)
    assert out["weight"].dtype == np.float64 and out["copies"].dtype == np.int64
    assert (out["copies"] == 1).all()
    assert "s0006" not in out.index  # dropped by clean: out
    assert out.loc[["s0007", "s0008"], "weight"].tolist() == [1.0, 1.0]  # test rows untouched
    assert out.loc[TRAIN_IDS, "weight"].mean() == pytest.approx(1.0)


def test_test_rows_pass_through_untouched(workdir):
    out = run(workdir, TINY, strategy="group_label")
    test = out[out["split"] == "test"]
    original = TINY.set_index("sample_id").loc[test.index]
    pd.testing.assert_frame_equal(test[original.columns], original)
    assert test["copies"].tolist() == [1, 1]
    assert out["rebalance_group"].tolist() == ["a"] * 4 + ["b"] * 2 + ["a", "b"]


def test_metrics_match_hand_computed_values(workdir):
    run(workdir, TINY, strategy="group_label")
    # Before: shares 4/6 and 2/6; P(0) = 2/3, P(0|a) = 3/4, P(0|b) = 1/2.
    # After Kamiran-Calders: P(0|g) = 2/3 for both, totals unchanged. Kish ESS of
    # group b: (4/3 + 2/3)^2 / ((4/3)^2 + (2/3)^2) = 1.8 (group a: 27/7).
    assert metrics_of(workdir) == {
        "group_share_ratio_before": 0.5,
        "group_share_ratio_after": 0.5,
        "label_dependence_before": round(1 / 6, 6),
        "label_dependence_after": 0.0,
        "min_effective_size": 1.8,
    }
    run(workdir, TINY, strategy="group")
    assert metrics_of(workdir)["group_share_ratio_after"] == 1.0


def test_resample_sizes_on_the_tiny_table(workdir):
    out = run(workdir, TINY, strategy="group", method="resample")
    train = out.loc[TRAIN_IDS]
    # Cell masses under group weights: a0 2.25, a1 0.75, b0 1.5, b1 1.5; largest
    # remainder rounds them to 2, 1, 2, 1 draws (6 in all, 3 per group).
    cells = train.groupby(["group", "label"])["copies"].agg(["sum", "min", "max"])
    assert cells["sum"].tolist() == [2, 1, 2, 1]
    assert cells.loc[("a", 0), "min"] == 0 and cells.loc[("a", 0), "max"] == 1  # under-sampled, kept
    assert train.loc["s0004", "copies"] == 2  # over-sampled: one row used twice, no new row
    assert len(out) == len(TINY) - 1 and out.index.is_unique
    assert (out["weight"] == 1.0).all()
    assert metrics_of(workdir)["group_share_ratio_after"] == 1.0


def test_resample_sizes_on_a_larger_table(workdir):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 340).tolist()
    pairs = [("big", y) for y in labels[:300]] + [("small", y) for y in labels[300:]]
    out = run(workdir, clean_table(pairs), strategy="group", method="resample", max_weight=20.0)
    totals = out.groupby("group")["copies"].sum()
    assert totals.sum() == 340
    assert abs(totals["big"] - 170) <= 3 and abs(totals["small"] - 170) <= 3  # rounding: < 1 per cell
    # Every row of a cell is used floor or ceil of its weight (170 / 300 or 170 / 40) times.
    assert set(out.loc[out["group"] == "big", "copies"]) == {0, 1}
    assert set(out.loc[out["group"] == "small", "copies"]) <= {4, 5}


def test_same_inputs_give_same_bytes_and_the_seed_matters(workdir, tmp_path_factory, monkeypatch):
    table = clean_table([("a", i % 3) for i in range(50)] + [("b", i % 3) for i in range(9)])
    params = {"strategy": "group", "method": "resample"}
    first = run(workdir, table, **params)
    first_bytes = outputs_bytes(workdir)
    # Another folder: no absolute path or timestamp may leak into the outputs.
    other = tmp_path_factory.mktemp("again")
    (other / "params.yaml").write_bytes((workdir / "params.yaml").read_bytes())
    monkeypatch.chdir(other)
    run(other, table, **params)
    assert outputs_bytes(other) == first_bytes
    set_params(other / "params.yaml", seed=1)
    reseeded = run(other, table, **params)
    assert not (reseeded["copies"] == first["copies"]).all()
    by_cell = ["group", "label"]
    assert reseeded.groupby(by_cell)["copies"].sum().equals(first.groupby(by_cell)["copies"].sum())


# --- groups too small to rebalance -------------------------------------------------

# a: 30 train rows, b: 24, tiny: 1 (under the default min_group_size of 20).
WITH_TINY = clean_table(
    [("a", i % 3) for i in range(30)] + [("b", i % 3) for i in range(24)] + [("tiny", 0)], test=[("tiny", 1)]
)


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("group", {}),
        ("group_label", {}),
        # tiny's share is set aside: a and b split the rest 0.5 / 0.25 rescaled, i.e. 2 : 1.
        ("target", {"target_shares": {"a": 0.5, "b": 0.25, "tiny": 0.25}}),
    ],
)
def test_a_tiny_group_keeps_weight_one_and_leaves_the_ratio(strategy, extra):
    settings = RebalanceParams(strategy=strategy, min_effective_size=0, **extra)
    assert settings.min_group_size == 20
    result = rebalance.compute(WITH_TINY, settings, seed=0)
    train = result.samples[result.samples["split"] == "train"]
    weight = train["weight"].to_numpy()
    tiny = (train["group"] == "tiny").to_numpy()
    assert weight[tiny].tolist() == [1.0]
    assert weight.mean() == pytest.approx(1.0) and weight[~tiny].mean() == pytest.approx(1.0)
    totals = train.groupby("group")["weight"].sum()
    expected = {"group": 27.0, "group_label": None, "target": 36.0}[strategy]  # a's total of the 54
    if expected is None:  # Kamiran-Calders keeps the group totals
        assert totals["a"] == pytest.approx(30.0) and totals["b"] == pytest.approx(24.0)
    else:
        assert totals["a"] == pytest.approx(expected) and totals["b"] == pytest.approx(54 - expected)
    figures = rebalance.metrics(result)
    # The gated ratio is over a and b only; over all groups the tiny group drags it to 1/36.
    assert figures["group_share_ratio_after"] == pytest.approx(
        min(totals["a"], totals["b"]) / max(totals["a"], totals["b"])
    )
    assert figures["group_share_ratio_before"] == pytest.approx(24 / 30)
    context = rebalance.report_context(Params(rebalance=settings), result)
    headline, warnings = dict(context["headline"]), context["verdict"].warnings
    assert headline["group share ratio after, all groups"] == pytest.approx(1 / max(totals["a"], totals["b"]))
    assert warnings[0] == (
        "1 group(s) too small to rebalance (fewer than rebalance.min_group_size = 20 train rows): "
        "tiny (1 rows); they keep weight 1 and are left out of the group share ratio"
    )
    assert not any("max_weight" in line for line in warnings)  # nothing blown up to parity


def test_a_tiny_group_under_resampling_is_used_once():
    result = rebalance.compute(WITH_TINY, RebalanceParams(method="resample"), seed=0)
    train = result.samples[result.samples["split"] == "train"]
    assert train.loc[train["group"] == "tiny", "copies"].tolist() == [1]
    assert train.groupby("group")["copies"].sum().to_dict() == {"a": 27, "b": 27, "tiny": 1}
    assert rebalance.metrics(result)["group_share_ratio_after"] == 1.0


def test_fewer_than_two_large_groups_rebalance_nothing_and_measure_all():
    table = clean_table([("a", i % 3) for i in range(30)] + [("tiny", 0), ("tiny", 1)])
    result = rebalance.compute(table, RebalanceParams(), seed=0)
    warnings = rebalance.report_context(Params(), result)["verdict"].warnings
    assert (result.samples["weight"] == 1.0).all()
    # One group's ratio to itself would be 1 whatever the data: the ratio is over all groups.
    assert rebalance.metrics(result)["group_share_ratio_after"] == pytest.approx(2 / 30)
    assert warnings[0].endswith(
        "tiny (2 rows); fewer than two groups are large enough, so nothing is rebalanced "
        "and the group share ratio is over all groups"
    )


def test_the_report_names_the_tiny_group(workdir):
    run(workdir, WITH_TINY, min_group_size=20)
    markdown = (workdir / "reports/rebalance.md").read_text()
    assert "**Verdict: WARN**" in markdown and "tiny (1 rows); they keep weight 1" in markdown
    assert "| tiny | 1 | too small: weight 1 |" in markdown
    assert "group share ratio after, all groups" in markdown
    assert (
        "Too small to rebalance (fewer than <code>min_group_size</code> = 20"
        in (workdir / "reports/rebalance.html").read_text()
    )
    assert metrics_of(workdir)["group_share_ratio_after"] == 1.0


# --- guards -------------------------------------------------------------------------


def test_low_effective_size_warns(workdir):
    run(workdir, TINY, strategy="group", min_effective_size=3)
    markdown = (workdir / "reports/rebalance.md").read_text()
    assert "**Verdict: WARN**" in markdown
    assert "group b: effective sample size 2.0 is below rebalance.min_effective_size 3" in markdown
    assert "group a: effective" not in markdown
    assert metrics_of(workdir)["min_effective_size"] == 2.0


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a division by zero would raise
@pytest.mark.parametrize("method", ["reweight", "resample"])
def test_empty_cell_is_named_not_divided_by(workdir, method):
    # Group b has no sample of class 2.
    table = clean_table([("a", 0), ("a", 1), ("a", 2), ("a", 2), ("b", 0), ("b", 1), ("b", 1)])
    out = run(workdir, table, strategy="group_label", method=method, min_effective_size=0)
    used = out["weight"] * out["copies"]
    assert np.isfinite(used).all() and used.mean() == pytest.approx(1.0)
    markdown = (workdir / "reports/rebalance.md").read_text()
    assert "1 empty group x label cell(s)" in markdown and "b x c2" in markdown
    assert "b x c2" in (workdir / "reports/rebalance.html").read_text()
    assert metrics_of(workdir)["label_dependence_after"] > 0  # cannot be removed


@pytest.mark.parametrize("method", ["reweight", "resample"])
def test_one_group_passes_through_and_says_so(workdir, method):
    table = clean_table([("only", y % 2) for y in range(7)], test=[("only", 0)])
    out = run(workdir, table, strategy="group_label", method=method)
    assert (out["weight"] == 1.0).all() and (out["copies"] == 1).all()
    assert "one group only (only)" in (workdir / "reports/rebalance.md").read_text()
    assert metrics_of(workdir)["group_share_ratio_after"] == 1.0


def test_intersectional_groups(workdir):
    site = ["x", "y", "x", "x", "y", "y", "x", "y"]
    table = clean_table([("a", 0)] * 6 + [("b", 1)] * 2, site=site)
    out = run(workdir, table, strategy="group", group_columns=["group", "site"])
    totals = out.groupby("rebalance_group")["weight"].sum()
    assert list(totals.index) == ["a / x", "a / y", "b / x", "b / y"]
    np.testing.assert_allclose(totals, 2.0)
    assert "a / y" in (workdir / "reports/rebalance.md").read_text()


def test_user_group_names_are_escaped_in_reports(workdir):
    table = clean_table([("<b>x|y</b>", 0), ("<b>x|y</b>", 1), ("plain", 0), ("plain", 1), ("plain", 1)])
    run(workdir, table)
    assert "<b>x" not in (workdir / "reports/rebalance.html").read_text()
    assert "x|y" not in (workdir / "reports/rebalance.md").read_text()


@pytest.mark.parametrize(
    ("params", "table", "message"),
    [
        ({"group_columns": ["group", "site"]}, TINY, "rebalance.group_columns: column 'site' is not in"),
        (
            {"strategy": "target", "target_shares": {"a": 0.5, "c": 0.5}},
            TINY,
            "rebalance.target_shares: group 'c' has no train rows",
        ),
        (
            {"strategy": "target", "target_shares": {"a": 1.0}},
            TINY,
            "rebalance.target_shares: train group 'b' has no share",
        ),
        ({}, clean_table([], test=[("a", 0)], dropped=[("a", 1)]), "no train rows in play"),
    ],
)
def test_bad_input_names_the_fault_and_writes_nothing(workdir, capsys, params, table, message):
    write_samples(workdir / "data/clean/samples.parquet", table)
    set_params(workdir / "params.yaml", rebalance=params)
    assert cli.main(["rebalance"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("curate: error: ") and error.count("\n") == 1 and message in error
    assert not (workdir / "data/balanced").exists() and not (workdir / "reports").exists()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"strategy": "target"}, "rebalance.target_shares: required (group: share) when"),
        ({"target_shares": {"a": 0.5, "b": 0.4}}, "shares sum to 0.9, must sum to 1"),
        ({"target_shares": {"a": 0.0, "b": 1.0}}, "rebalance.target_shares: share of group 'a' is 0.0"),
        ({"max_weight": 0.5}, "rebalance.max_weight: 0.5 is out of range (allowed: 1 <= value)"),
        ({"group_columns": []}, "rebalance.group_columns: []"),
        ({"method": "smote"}, "rebalance.method: 'smote' is not allowed"),
    ],
)
def test_params_errors_name_the_key(workdir, section, message):
    set_params(workdir / "params.yaml", rebalance=section)
    with pytest.raises(CurateError) as caught:
        load_params(workdir / "params.yaml")
    assert message in str(caught.value)


def test_template_params_default():
    from tests.conftest import REPO

    settings = load_params(REPO / "params.yaml").rebalance
    assert (settings.strategy, settings.method, settings.group_columns) == ("group", "reweight", ["group"])


# --- the pure functions ---------------------------------------------------------------


def test_clip_weights_by_hand():
    # Mean 4.8; the 20 is clipped to 3 and the rest rescaled to (5 - 3) / 4 = 0.5 each.
    np.testing.assert_allclose(balance.clip_weights(np.array([1, 1, 1, 1, 20.0]), 3), [0.5] * 4 + [3])
    np.testing.assert_allclose(balance.clip_weights(np.array([2, 4.0]), 10), [2 / 3, 4 / 3])
    np.testing.assert_allclose(balance.clip_weights(np.array([1, 9.0]), 1), [1, 1])


def test_kish_ess_by_hand():
    groups = np.array([0, 0, 1, 1, 2])
    np.testing.assert_allclose(balance.kish_ess(np.array([2, 2, 1, 3, 0.0]), groups, 3), [2, 1.6, 0])


def test_largest_remainder_keeps_the_total():
    assert balance.largest_remainder(np.array([2.25, 0.75, 1.5, 1.5])).tolist() == [2, 1, 2, 1]


tables = st.integers(2, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 3), min_size=n, max_size=n),
        st.lists(st.integers(0, 2), min_size=n, max_size=n),
    )
)


def codes(values):
    """Dense group codes, as pd.factorize makes them (every code in [0, G) occurs)."""
    dense, names = pd.factorize(np.asarray(values), sort=True)
    return dense, len(names)


@settings(max_examples=200, deadline=None)
@given(tables)
def test_group_weights_are_positive_mean_one_and_equal_per_group(table):
    groups, n_groups = codes(table[0])
    weights = balance.equal_group_weights(groups, n_groups)
    assert (weights > 0).all()
    assert weights.mean() == pytest.approx(1.0)
    totals = np.bincount(groups, weights=weights)
    np.testing.assert_allclose(totals, len(groups) / n_groups)


@settings(max_examples=200, deadline=None)
@given(tables)
def test_kamiran_calders_weights_remove_the_dependence(table):
    groups, n_groups = codes(table[0])
    labels = np.asarray(table[1])
    weights = balance.clip_weights(balance.kamiran_calders_weights(groups, labels, n_groups, 3), np.inf)
    assert (weights > 0).all()
    assert weights.mean() == pytest.approx(1.0)
    counts = balance.cell_counts(groups, labels, n_groups, 3)
    if (counts[:, counts.sum(axis=0) > 0] > 0).all():  # no empty cell
        mass = np.zeros((n_groups, 3))
        np.add.at(mass, (groups, labels), weights)
        label_given_group = mass / mass.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(label_given_group, mass.sum(axis=0) / mass.sum() * np.ones_like(mass))
        np.testing.assert_allclose(mass.sum(axis=1), counts.sum(axis=1))  # group totals kept


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, 1000), min_size=1, max_size=50), st.floats(1.0, 20.0))
def test_clipped_weights_have_mean_one_under_the_cap_in_order(raw, cap):
    raw = np.asarray(raw)
    weights = balance.clip_weights(raw, cap)
    assert (weights > 0).all()
    assert weights.mean() == pytest.approx(1.0)
    assert weights.max() <= cap * (1 + 1e-9)
    assert (np.diff(weights[np.argsort(raw, kind="stable")]) >= -1e-12).all()  # order kept


@settings(max_examples=200, deadline=None)
@given(tables, st.integers(0, 2**32 - 1))
def test_resample_counts_match_cell_masses_and_are_deterministic(table, seed):
    groups, n_groups = codes(table[0])
    labels = np.asarray(table[1])
    weights = balance.equal_group_weights(groups, n_groups)
    copies = balance.resample_counts(groups, labels, weights, 3, seed)
    assert copies.dtype == np.int64 and (copies >= 0).all()
    assert copies.sum() == len(groups)
    cells = groups * 3 + labels
    assert (np.abs(np.bincount(cells, weights=copies) - np.bincount(cells, weights=weights)) < 1).all()
    assert (copies == balance.resample_counts(groups, labels, weights, 3, seed)).all()

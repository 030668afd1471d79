"""The audit (``curate.curation.audit``): its bands and random order, the Wilson interval, the
estimate from ledger lines (the prefix rule, stale lines), and clean acting only where it pays.

The clean tests run the pure ``compute`` on the hand-made table of ``tests/test_clean.py`` (train
rows 3, 8 of class a, 24, 29 of b, 45, 50 of c are flipped and flagged).
"""

import math

import numpy as np
import pandas as pd
import pytest

from curate.curation import audit
from curate.data import ledger
from curate.errors import CurateError
from curate.stages import clean
from tests.test_ledger import _clean, ledger_dir  # noqa: F401 (the clean tests' fixture)


def _flags(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"sample_id": [f"f{i:04d}" for i in range(n)], "label_quality": rng.random(n)})


def _decisions(rows: dict[str, tuple[str, str, str]]) -> pd.DataFrame:
    """sample_id -> (decision, label, audit cell), as the estimate reads standing decisions."""
    return pd.DataFrame.from_dict(rows, orient="index", columns=["decision", "label", "audit"])


def test_bands_hold_equal_counts_by_label_quality_and_the_order_is_fixed_under_seed():
    flags = _flags(103)
    ordered = audit.order(flags, seed=0, bands=4)
    assert ordered.groupby("band").size().tolist() == [26, 26, 26, 25]
    top = ordered.groupby("band")["label_quality"].max().to_numpy()
    low = ordered.groupby("band")["label_quality"].min().to_numpy()
    assert (top[:-1] <= low[1:]).all()  # band 1 holds the lowest label quality
    assert (
        ordered["sample_id"].tolist()
        == audit.order(flags.sample(frac=1, random_state=3), 0, 4)["sample_id"].tolist()
    )  # the input's order does not matter
    assert ordered["sample_id"].tolist() != audit.order(flags, seed=1, bands=4)["sample_id"].tolist()
    # A flag keeps its place among the others when flags are added (the priority is its own).
    grown = audit.order(
        pd.concat([flags, _flags(20, seed=9).assign(sample_id=lambda f: "new" + f["sample_id"])]), 0, 1
    )
    old = grown[~grown["sample_id"].str.startswith("new")]["sample_id"].tolist()
    assert old == audit.order(flags, 0, 1)["sample_id"].tolist()


def test_the_sample_takes_each_bands_first_flags_in_turn():
    ordered = audit.order(_flags(40), seed=0, bands=4)
    chosen = audit.sample(ordered, 10, 4)
    assert chosen["band"].tolist() == [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]  # at most ceil(10 / 4) = 3 of a band
    assert chosen["rank"].tolist() == [0] * 4 + [1] * 4 + [2] * 2


def test_wilson_interval_matches_known_values():
    assert audit.wilson(0, 0) == (0.0, 1.0)
    low, high = audit.wilson(25, 25)
    assert low == pytest.approx(0.8668, abs=1e-4) and high == pytest.approx(1.0)
    low, high = audit.wilson(20, 25)
    assert (low, high) == (pytest.approx(0.6087, abs=1e-4), pytest.approx(0.9114, abs=1e-4))


def test_no_flags_no_audit():
    ordered = audit.order(_flags(0), seed=0, bands=4).assign(given="a")
    measured = audit.estimate(ordered, _decisions({"x": ("drop", "", "1 of 4")}), bands=4)
    assert (measured.counted, measured.stale) == (0, 1) and math.isnan(measured.precision)


def _ordered(n: int = 16, bands: int = 2) -> pd.DataFrame:
    return audit.order(_flags(n), seed=0, bands=bands).assign(given="a")


def test_the_estimate_counts_a_prefix_of_the_order_and_queue_decisions_inside_it():
    ordered = _ordered()
    band1 = ordered[ordered["band"] == 1]["sample_id"].tolist()
    decisions = _decisions(
        {
            band1[0]: ("drop", "", ""),  # decided in queue order before the audit: counts where it falls
            band1[1]: ("relabel", "b", "1 of 2"),
            band1[2]: ("keep", "", "1 of 2"),
            band1[4]: ("drop", "", "1 of 2"),  # past band1[3], which has no decision: waits
            band1[6]: ("relabel", "a", ""),  # a queue decision past the audit's reach: not counted
        }
    )
    measured = audit.estimate(ordered, decisions, bands=2)
    first, second = measured.bands
    assert (first.counted, first.confirmed, first.waiting) == (3, 2, 1)
    assert first.precision == pytest.approx(2 / 3) and first.interval == audit.wilson(2, 3)
    assert (second.counted, measured.audit_lines, measured.stale) == (0, 3, 0)
    assert measured.precision == pytest.approx(2 / 3)  # only audited bands weigh in
    assert not second.trusted(0.0)  # an unaudited band is never trusted


def test_lines_on_flags_that_moved_or_went_are_stale_and_set_aside():
    ordered = _ordered()
    band1 = ordered[ordered["band"] == 1]["sample_id"].tolist()
    band2 = ordered[ordered["band"] == 2]["sample_id"].tolist()
    decisions = _decisions(
        {
            band2[0]: ("drop", "", "1 of 2"),  # recorded in band 1, now in band 2
            band1[0]: ("drop", "", "1 of 2"),
            "gone": ("drop", "", "1 of 2"),  # no longer flagged
            "f-old": ("keep", "", ""),  # a queue decision on an unflagged sample: not an audit line
        }
    )
    measured = audit.estimate(ordered, decisions, bands=2)
    assert (measured.audit_lines, measured.stale) == (3, 2) and measured.stale_share == pytest.approx(2 / 3)
    assert [band.counted for band in measured.bands] == [1, 0]
    assert measured.figures()["audit_stale"] == 2


def test_an_audit_cell_that_names_no_band_is_refused_with_its_line():
    with pytest.raises(CurateError, match=r"line 2: audit 'band two' names no band"):
        ledger.check_entry(
            {"decision": "keep", "label": "", "audit": "band two"}, ["a"], "decisions.csv line 2"
        )
    assert ledger.parse_band("3 of 4") == (3, 4) and ledger.parse_band("5 of 4") is None


# The hand-made table's six flags, cut into 4 bands by label quality.
def _audit_lines(result: clean.Cleaned, verdicts: dict[int, str]) -> str:
    """One audit line per flag of the bands in ``verdicts`` (band -> drop | keep)."""
    train = result.train
    lines = []
    for sample_id, band in zip(train["sample_id"], train["audit_band"], strict=True):
        if band in verdicts:
            lines.append(f"{sample_id},,{verdicts[band]},,ann,,{ledger.band_label(band, 4)}")
    return "\n".join(lines) + "\n"


@pytest.mark.usefixtures("ledger_dir")
def test_a_ledger_without_audit_lines_acts_exactly_as_before():
    queue = "s003,,keep,,ann,\ns010,,drop,,ann,\n"
    audited, always = _clean(queue), _clean(queue, act_when="always")
    pd.testing.assert_frame_equal(audited.samples, always.samples)
    assert audited.audit_held == 0 and (audited.train["action"].isin(["drop", "relabel"]).sum() > 0)
    figures = clean.metrics(audited)
    assert math.isnan(figures["audited_precision"]) and figures["audit_lines"] == 0


@pytest.mark.usefixtures("ledger_dir")
def test_clean_acts_on_the_bands_the_audit_trusts_and_holds_the_rest():
    first = _clean(None)
    assert sorted(first.train["audit_band"].value_counts().items()) == [
        (0, 54),
        (1, 2),
        (2, 1),
        (3, 2),
        (4, 1),
    ]
    # Band 1 confirmed, band 3 overturned (people keep its flags), bands 2 and 4 unaudited.
    result = _clean(_audit_lines(first, {1: "drop", 3: "keep"}), min_precision=0.3)
    train = result.train
    auto = train[train["action_source"] == "auto"]
    held = auto[auto["audit_band"].isin([2, 4])]
    assert (held["action"] == "keep").all() and len(held) == 2 == result.audit_held
    assert held["action_reason"].str.contains("held: band . of 4 is not audited yet").all()
    # A held flag weighs the chance its label is right: unaudited, the fold models' probability of it.
    assert (
        held["label_weight"].between(0.01, 0.5).all()
        and (auto.loc[~auto["is_label_issue"], "label_weight"] == 1).all()
    )
    figures = clean.metrics(result)
    assert figures["audited_precision"] == pytest.approx(0.5) and figures["audited"] == 4
    assert [band["counted"] for band in figures["audit_bands"]] == [2, 0, 2, 0]
    # With a lower bound under the bar everywhere, every automatic flag is held, with its band's figures.
    strict = _clean(_audit_lines(first, {1: "drop", 2: "keep"}), min_precision=0.9)
    assert strict.audit_held == 3  # bands 3 and 4: the audited bands' flags were all decided by people
    reasons = strict.train.loc[strict.train["audit_band"] == 3, "action_reason"]
    assert reasons.str.contains("not audited yet").all()
    # Band 3's first flag in audit order overturned: its other flag is held, with the band's figures.
    flags = first.train.loc[first.train["is_label_issue"], ["sample_id", "label_quality"]]
    ordered = audit.order(flags, seed=0, bands=4)
    first_of_3, other = ordered.loc[ordered["band"] == 3, "sample_id"].tolist()
    overturned = _clean(f"{first_of_3},,keep,,ann,,3 of 4\n", min_precision=0.3)
    reason = overturned.train.set_index("sample_id").at[other, "action_reason"]
    assert (
        "held: low audited precision (band 3 of 4: 0 of 1 audited flags confirmed, 95% interval 0.00-0.79"
        in reason
    )
    assert "loss weight 1.000, the chance its label is right: 1 - band 3's audited precision" in reason


@pytest.mark.usefixtures("ledger_dir")
def test_the_fold_skill_floor_comes_before_the_audit():
    first = _clean(None)
    result = _clean(_audit_lines(first, {1: "drop"}), min_fold_skill=1.0)
    assert result.choice.action == "keep" and result.audit_held == 0  # nothing acted on, nothing to hold
    assert (result.train.loc[result.train["action_source"] == "auto", "action"] != "drop").all()


@pytest.mark.usefixtures("ledger_dir")
def test_the_report_shows_the_audit_and_warns_when_it_is_stale():
    from curate.params import Params

    first = _clean(None)
    lines = _audit_lines(first, {1: "drop", 3: "drop"})
    moved = lines.replace("1 of 4", "2 of 4")  # as if the flags had moved: every line stale
    result = _clean(moved)
    params = Params(clean={"audit_max_stale": 0.2, "min_precision": 0.3})
    warnings = clean.clean_report.verdict_warnings(params, result, clean.metrics(result))
    assert any("the audit is stale: 2 of its 4 lines" in warning for warning in warnings)
    context = clean.report_context(params, _clean(lines, min_precision=0.3))
    assert context["audit_rows"][0][-1] == "acted on" and "<svg" in context["audit_chart"]


@pytest.mark.usefixtures("ledger_dir")
def test_action_weight_keeps_flags_weighted_by_the_chance_their_label_is_right():
    from curate.stages import rebalance

    first = _clean(None)
    result = _clean(_audit_lines(first, {1: "drop", 3: "keep"})[:-1].split("\n")[0] + "\n", action="weight")
    train = result.train
    weighted = train[train["action"] == "weight"]
    auto = train[train["action_source"] == "auto"]
    assert len(weighted) == 5 and (auto["action"] != "drop").all()  # the sixth flag: a person dropped it
    band1 = weighted[weighted["audit_band"] == 1]  # its audited flag confirmed: precision 1, weight 0
    assert (band1["label_weight"] == 0).all() and "1 - band 1's audited precision" in band1[
        "action_reason"
    ].iloc[0]
    others = weighted[weighted["audit_band"] != 1]  # not audited: the fold models' probability
    assert (
        others["label_weight"].between(0.01, 0.5).all()
        and (train.loc[~train["is_label_issue"], "label_weight"] == 1).all()
    )
    assert (
        "the fold models' probability of its label (clean.action weight)" in others["action_reason"].iloc[0]
    )
    balanced = rebalance.compute(result.samples, rebalance.RebalanceParams(strategy="none"), 0).samples
    fit = balanced[balanced["split"] == "train"]
    assert fit["weight"].mean() == pytest.approx(1.0)
    assert (
        fit.loc[band1.index, "weight"].eq(0).all()
        and fit.loc[others.index, "weight"].lt(fit["weight"].max()).all()
    )

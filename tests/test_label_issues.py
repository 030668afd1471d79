import numpy as np
import pandas as pd
import pytest

from curate.errors import CurateError
from curate.label_issues import (
    check_class_sizes,
    decide_actions,
    detection_scores,
    duplicate_extras,
    duplicates_and_outliers,
    find_issues,
)


def train_table(flagged, quality, labels, groups, confidence=None):
    n = len(flagged)
    return pd.DataFrame(
        {
            "is_label_issue": flagged,
            "label_quality": quality,
            "label": labels,
            "group": groups,
            "predicted_confidence": confidence if confidence is not None else [0.5] * n,
            "drop_candidate": [False] * n,
        }
    )


def test_drop_removes_flagged_within_budget():
    table = train_table([True, False, True, False], [0.1, 0.9, 0.2, 0.8], [0, 0, 1, 1], ["a"] * 4)
    actions, notes = decide_actions(table, action="drop", relabel_min_confidence=0.9, max_drop_fraction=0.5)
    assert actions.tolist() == ["drop", "none", "drop", "none"]
    assert notes == []


def test_keep_only_flags():
    table = train_table([True, False], [0.1, 0.9], [0, 0], ["a", "a"])
    actions, _ = decide_actions(table, action="keep", relabel_min_confidence=0.9, max_drop_fraction=1.0)
    assert actions.tolist() == ["keep", "none"]


def test_relabel_needs_confidence_else_drop():
    table = train_table([True, True, False], [0.1, 0.2, 0.9], [0, 0, 1], ["a"] * 3, [0.95, 0.6, 0.99])
    actions, _ = decide_actions(table, action="relabel", relabel_min_confidence=0.9, max_drop_fraction=1.0)
    assert actions.tolist() == ["relabel", "drop", "none"]


def test_cap_holds_back_least_suspicious_and_says_where():
    # Class 0 has 4 rows, 3 flagged: a 0.5 cap allows 2 removals, the most suspicious two.
    table = train_table(
        [True, True, True, False, True, False],
        [0.3, 0.1, 0.2, 0.9, 0.1, 0.9],
        [0, 0, 0, 0, 1, 1],
        ["a", "a", "a", "a", "b", "b"],
    )
    actions, notes = decide_actions(table, action="drop", relabel_min_confidence=0.9, max_drop_fraction=0.5)
    assert actions.tolist() == ["keep", "drop", "drop", "none", "drop", "none"]
    assert notes == ["group a: 1 removal(s) held back", "label 0: 1 removal(s) held back"]


def test_cap_applies_per_group_too():
    # Class 0 could lose 5 rows, but the small group only 1 of its 2.
    table = train_table(
        [True, True] + [False] * 8, [0.1, 0.2] + [0.9] * 8, [0] * 10, ["small"] * 2 + ["big"] * 8
    )
    actions, notes = decide_actions(table, action="drop", relabel_min_confidence=0.9, max_drop_fraction=0.5)
    assert actions.tolist()[:2] == ["drop", "keep"]
    assert "group small: 1 removal(s) held back" in notes


def test_detection_scores():
    flagged = np.array([True, True, False, False, True])
    noisy = np.array([True, False, True, False, True])
    scores = detection_scores(flagged, noisy)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert np.isnan(detection_scores(np.zeros(3, bool), np.zeros(3, bool))["precision"])


def test_small_class_is_named():
    with pytest.raises(CurateError, match="class 'cat' has 2 train sample"):
        check_class_sizes(np.array([0, 0, 1, 1, 1]), ["cat", "dog"], folds=3)


def test_find_issues_on_confident_wrong_predictions():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 50)
    pred_probs = np.full((150, 3), 0.02)
    pred_probs[np.arange(150), labels] = 0.96
    flipped = rng.choice(150, 12, replace=False)
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1) % 3
    is_issue, quality = find_issues(
        given,
        pred_probs,
        filter_by="prune_by_noise_rate",
        frac_noise=1.0,
        min_examples_per_class=1,
        rank_by="self_confidence",
    )
    assert set(np.flatnonzero(is_issue)) == set(flipped)
    assert quality[flipped].max() < quality[~is_issue].min()


def test_duplicates_sets_and_extras():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 8))
    features[1] = features[0] + 1e-6
    features[2] = features[0] + 2e-6
    features[50] = features[40] + 1e-6
    checks = duplicates_and_outliers(features, rng.integers(0, 2, 200))
    sets = checks["duplicate_set"].to_numpy()
    assert sets[0] == sets[1] == sets[2] == 0 and sets[40] == sets[50] == 40
    assert (sets[[3, 4, 5]] == -1).all()
    quality = np.linspace(0, 1, 200)
    extras = duplicate_extras(sets, quality)
    assert np.flatnonzero(extras).tolist() == [0, 1, 40]

import numpy as np
import pandas as pd
import pytest

from curate.curation import neighbours
from curate.curation.label_issues import (
    decide_actions,
    detection_scores,
    duplicate_extras,
    duplicates_and_outliers,
    evidence,
    find_issues,
    fit_temperature,
    fold_skill,
    knn_probs,
    relabel_floors,
    temperature_scaled,
)
from curate.curation.neighbours import DATALAB_K
from curate.errors import CurateError
from curate.learning.fold_training import FoldTraining, check_class_sizes, fold_model
from curate.learning.model_choice import Backbone


def train_table(flagged, quality, labels, groups, confidence=None, predicted=None):
    n = len(flagged)
    return pd.DataFrame(
        {
            "is_label_issue": flagged,
            "label_quality": quality,
            "label": labels,
            "group": groups,
            "predicted_label": predicted if predicted is not None else [(label + 1) % 2 for label in labels],
            "predicted_confidence": confidence if confidence is not None else [0.5] * n,
            "drop_candidate": [False] * n,
        }
    )


def decided(table: pd.DataFrame, **options) -> tuple[pd.Series, list[str]]:
    """:func:`decide_actions`' actions and where the cap bound."""
    decision = decide_actions(table, **options)
    return decision.actions, decision.notes


def test_drop_removes_flagged_within_budget():
    table = train_table([True, False, True, False], [0.1, 0.9, 0.2, 0.8], [0, 0, 1, 1], ["a"] * 4)
    actions, notes = decided(table, action="drop", relabel_floor=0.9, max_drop_fraction=0.5)
    assert actions.tolist() == ["drop", "none", "drop", "none"]
    assert notes == []


def test_keep_only_flags():
    table = train_table([True, False], [0.1, 0.9], [0, 0], ["a", "a"])
    actions, _ = decided(table, action="keep", relabel_floor=0.9, max_drop_fraction=1.0)
    assert actions.tolist() == ["keep", "none"]


def test_relabel_needs_confidence_else_drop():
    table = train_table([True, True, False], [0.1, 0.2, 0.9], [0, 0, 1], ["a"] * 3, [0.95, 0.6, 0.99])
    actions, _ = decided(table, action="relabel", relabel_floor=0.9, max_drop_fraction=1.0, cap="absolute")
    assert actions.tolist() == ["relabel", "drop", "none"]


def test_relabel_floor_per_row():
    table = train_table([True, True], [0.1, 0.2], [0, 0], ["a"] * 2, [0.4, 0.4])
    actions, _ = decided(
        table, action="relabel", relabel_floor=np.array([0.3, 0.5]), max_drop_fraction=1.0, cap="absolute"
    )
    assert actions.tolist() == ["relabel", "drop"]


def test_relabel_floors_auto_are_confident_learning_thresholds():
    # Class 0's rows give class 0 a mean 0.7, class 1's rows give class 1 a mean 0.4.
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.5, 0.5], [0.7, 0.3]])
    labels = np.array([0, 0, 1, 1])
    assert relabel_floors(probs, labels, "auto") == pytest.approx([0.7, 0.7, 0.7, 0.7])
    probs[2:] = [[0.6, 0.4], [0.2, 0.8]]  # predicted: 0, 0, 0, 1
    assert relabel_floors(probs, labels, "auto") == pytest.approx([0.7, 0.7, 0.7, 0.6])
    assert relabel_floors(probs, labels, 0.9).tolist() == [0.9] * 4


def test_fold_skill_is_kappa_beyond_chance():
    labels = np.repeat(np.arange(4), 25)
    assert fold_skill(labels, labels) == 1.0
    shuffled = np.random.default_rng(0).permutation(labels)
    assert abs(fold_skill(shuffled, labels)) < 0.15
    assert fold_skill(np.zeros(5, dtype=int), np.zeros(5, dtype=int)) == 1.0


def test_relabels_within_a_class_cost_nothing_when_classes_swap_alike():
    # 50% uniform noise between two classes: each loses 5 rows to the other and gains 5 back;
    # the 0.3 cap (3 rows a class) never binds, where dropping would hold 2 flips per class back.
    labels = np.repeat([0, 1], 10)
    flagged = ([True] * 5 + [False] * 5) * 2
    table = train_table(flagged, [i / 10 for i in range(10)] * 2, labels, ["a"] * 20, [0.6] * 20)
    actions, notes = decided(
        table, action="relabel", relabel_floor=0.5, max_drop_fraction=0.3, cap="absolute"
    )
    assert (actions == "relabel").sum() == 10 and notes == []
    dropped, notes = decided(table, action="drop", relabel_floor=0.5, max_drop_fraction=0.3, cap="absolute")
    assert (dropped == "keep").sum() == 4 and "label 0: 2 removal(s) held back" in notes


def test_cap_still_protects_a_hard_class_from_relabels():
    # Class 1 (a hard class: the models call 8 of its 10 rows class 0) may lose 3 rows net.
    labels = np.repeat([0, 1], 10)
    flagged = [False] * 10 + [True] * 8 + [False] * 2
    table = train_table(flagged, [0.9] * 10 + [i / 10 for i in range(10)], labels, ["a"] * 20, [0.95] * 20)
    actions, notes = decided(
        table, action="relabel", relabel_floor=0.9, max_drop_fraction=0.3, cap="absolute"
    )
    assert actions[10:13].eq("relabel").all() and actions[13:18].eq("keep").all()
    assert notes == ["label 1: 5 removal(s) held back"]


def test_cap_holds_back_least_suspicious_and_says_where():
    # Class 0 has 4 rows, 3 flagged: an absolute 0.5 cap allows 2 removals, the most suspicious two.
    table = train_table(
        [True, True, True, False, True, False],
        [0.3, 0.1, 0.2, 0.9, 0.1, 0.9],
        [0, 0, 0, 0, 1, 1],
        ["a", "a", "a", "a", "b", "b"],
    )
    actions, notes = decided(table, action="drop", relabel_floor=0.9, max_drop_fraction=0.5, cap="absolute")
    assert actions.tolist() == ["keep", "drop", "drop", "none", "drop", "none"]
    assert notes == ["group a: 1 removal(s) held back", "label 0: 1 removal(s) held back"]


def test_cap_applies_per_group_too():
    # Class 0 could lose 5 rows, but the small group only 1 of its 2.
    table = train_table(
        [True, True] + [False] * 8, [0.1, 0.2] + [0.9] * 8, [0] * 10, ["small"] * 2 + ["big"] * 8
    )
    actions, notes = decided(table, action="drop", relabel_floor=0.9, max_drop_fraction=0.5)
    assert actions.tolist()[:2] == ["drop", "keep"]
    assert "group small: 1 removal(s) held back" in notes


def _global_noise(n_classes=4, rows=10, flagged=5):
    """Every class flagged alike (``flagged`` of ``rows``), most suspicious first within a class."""
    flags = ([True] * flagged + [False] * (rows - flagged)) * n_classes
    quality = [i / rows for i in range(rows)] * n_classes
    return train_table(flags, quality, np.repeat(np.arange(n_classes), rows), ["a"] * (n_classes * rows))


def test_relative_cap_removes_global_noise_that_the_absolute_cap_keeps():
    # 50% of every class flagged: noise, not a hard class. The absolute 0.3 cap keeps the 2 least
    # suspicious flags of each class (the ambiguous images the model then learns); the relative
    # budget, (0.5 + 0.3) x 10 = 8 per class, removes them all.
    table = _global_noise()
    before, notes = decided(table, action="drop", relabel_floor=0.9, max_drop_fraction=0.3, cap="absolute")
    assert (before == "keep").sum() == 8 and len(notes) == 5
    after, notes = decided(table, action="drop", relabel_floor=0.9, max_drop_fraction=0.3)
    assert (after == "drop").sum() == 20 and notes == []


def test_relative_cap_still_protects_a_class_flagged_far_more_than_the_rest():
    # Class 3 (a hard class) is flagged at 9 of 10 while the others are not flagged: overall 9/40,
    # so class 3 may lose floor((0.225 + 0.3) x 10) = 5; its 4 least suspicious flags stay.
    table = train_table(
        [False] * 30 + [True] * 9 + [False],
        [0.9] * 30 + [i / 10 for i in range(10)],
        np.repeat(np.arange(4), 10),
        ["a"] * 40,
    )
    actions, notes = decided(table, action="drop", relabel_floor=0.9, max_drop_fraction=0.3)
    assert actions[30:35].eq("drop").all() and actions[35:39].eq("keep").all()
    assert notes == ["label 3: 4 removal(s) held back"]


def test_relative_cap_still_protects_a_small_group():
    # A 4-row group, all flagged, among 36 clean rows: overall 4/40, budget floor(0.4 x 4) = 1.
    table = train_table(
        [True] * 4 + [False] * 36, [0.1] * 4 + [0.9] * 36, [0, 1] * 20, ["small"] * 4 + ["big"] * 36
    )
    actions, notes = decided(table, action="drop", relabel_floor=0.9, max_drop_fraction=0.3)
    assert actions[:4].tolist().count("drop") == 1 and actions[:4].tolist().count("keep") == 3
    assert notes == ["group small: 3 removal(s) held back"]


def test_relative_cap_leaves_min_rows_of_every_class():
    # 90% flagged everywhere: (0.9 + 0.3) x 10 would remove every row; 2 stay per class.
    table = _global_noise(n_classes=2, rows=10, flagged=9)
    actions, _ = decided(table, action="drop", relabel_floor=0.9, max_drop_fraction=0.3, min_rows=2)
    assert (actions == "drop").sum() == 16 and (actions != "drop").groupby(table["label"]).sum().tolist() == [
        2,
        2,
    ]


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
        check_class_sizes(np.array([0, 0, 1, 1, 1]), ["cat", "dog"], k=3)


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
    checks = duplicates_and_outliers(neighbours.build(features, DATALAB_K))
    sets = checks["duplicate_set"].to_numpy()
    assert sets[0] == sets[1] == sets[2] == 0 and sets[40] == sets[50] == 40
    assert (sets[[3, 4, 5]] == -1).all()
    quality = np.linspace(0, 1, 200)
    extras = duplicate_extras(sets, quality)
    assert np.flatnonzero(extras).tolist() == [0, 1, 40]


def overconfident(seed=0, n=600, k=3):
    """Probabilities from a model right 70% of the time but always 99% sure: three folds."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    predicted = np.where(rng.random(n) < 0.7, labels, (labels + rng.integers(1, k, n)) % k)
    probs = np.full((n, k), 0.01 / (k - 1))
    probs[np.arange(n), predicted] = 0.99
    return probs.astype(np.float32), labels, np.arange(n) % 3


def nll(probs, labels):
    return -np.log(probs[np.arange(len(labels)), labels]).mean()


def test_temperature_scaling_lowers_nll_of_an_overconfident_model():
    probs, labels, folds = overconfident()
    scaled = temperature_scaled(probs, labels, folds)
    assert nll(scaled, labels) < 0.7 * nll(probs, labels)
    assert np.allclose(scaled.sum(axis=1), 1, atol=1e-5)
    assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()  # a temperature keeps the ranking
    assert fit_temperature(np.log(probs.astype(np.float64)), labels) > 1  # softened, not sharpened


def test_knn_evidence_points_to_the_neighbours_class():
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0]])
    embeddings = np.concatenate(
        [centres[0] + rng.normal(size=(30, 3)), centres[1] + rng.normal(size=(30, 3))]
    )
    labels = np.repeat([0, 1], 30)
    labels[3] = 1  # a class-0 image filed as 1
    graph = neighbours.build(embeddings, 10)
    nearby = knn_probs(graph.rows(10), labels, n_classes=2)
    assert nearby[3].argmax() == 0 and nearby[3, 0] > 0.8
    assert np.allclose(nearby.sum(axis=1), 1)
    pred_probs = np.full((60, 2), 0.5, dtype=np.float32)
    folds = np.arange(60) % 2
    same = evidence(pred_probs, labels, folds, graph, calibrate="none", knn_weight=0.0, knn_k=10)
    assert np.array_equal(same, pred_probs)
    mixed = evidence(pred_probs, labels, folds, graph, calibrate="none", knn_weight=0.5, knn_k=10)
    assert np.allclose(mixed, 0.5 * pred_probs + 0.5 * nearby)


def tiny_training(**overrides):
    fields = dict(
        n_classes=2,
        backbone=Backbone("cnn", section="folds"),
        epochs=1,
        batch_size=16,
        lr=0.01,
        seed=3,
        polarity="off",
    )
    return FoldTraining(**(fields | overrides))


def test_an_ensemble_averages_models_seeded_apart():
    import torch

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (48, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(48) % 2
    fit_rows, held_out = np.arange(32), np.arange(32, 48)
    cpu = torch.device("cpu")
    args = (images, labels, fit_rows, held_out, 1)
    first_net, pair = fold_model(*args, tiny_training(ensemble=2), cpu)
    _, first = fold_model(*args, tiny_training(), cpu)
    _, second = fold_model(*args, tiny_training(seed=103), cpu)  # member 1's seed: 100_000 further
    assert np.allclose(pair, (first + second) / 2, atol=1e-6)
    assert not np.allclose(first, second)
    assert first_net is not None


def test_per_group_thresholds_judge_each_large_group_alone():
    from cleanlab.filter import find_label_issues

    rng = np.random.default_rng(1)
    n, k = 260, 3
    labels = rng.integers(0, k, n)
    # The big group's model is sure of itself, the other group's much less.
    sure = np.where(np.arange(n) < 200, 0.9, 0.5)
    probs = np.full((n, k), 0.0)
    guess = np.where(rng.random(n) < 0.85, labels, (labels + 1) % k)
    probs[np.arange(n), guess] = sure
    probs += ((1 - sure) / k)[:, None]
    probs /= probs.sum(axis=1, keepdims=True)
    groups = np.array(["big"] * 200 + ["small"] * 40 + ["tiny"] * 20)
    groups[200:260:2] = "small"  # small: 50 rows, tiny: 10
    options = dict(
        filter_by="prune_by_noise_rate", frac_noise=1.0, min_examples_per_class=1, rank_by="self_confidence"
    )
    pooled, _ = find_issues(labels, probs, **options)
    split, _ = find_issues(labels, probs, **options, groups=groups)
    small = groups == "small"
    assert np.array_equal(
        split[small], find_label_issues(labels[small], probs[small], filter_by="prune_by_noise_rate")
    )
    assert np.array_equal(split[groups == "tiny"], pooled[groups == "tiny"])  # under 50 rows: pooled


def test_fold_epochs_raise_small_data_to_min_steps_and_leave_large_data_alone():
    from curate.learning.fold_training import fold_epochs

    training = FoldTraining(
        n_classes=4,
        backbone=Backbone("cnn", section="folds"),
        epochs=12,
        batch_size=128,
        lr=0.01,
        seed=0,
        polarity="auto",
        min_steps=200,
    )
    assert fold_epochs(3109, training) == 12  # the demo's folds: 25 steps an epoch, 300 steps already
    assert fold_epochs(960, training) == 25  # 8 steps an epoch: 25 epochs make the 200 steps
    assert fold_epochs(5, training) == 200  # one step an epoch
    unfloored = FoldTraining(**{**training.__dict__, "min_steps": 0})
    assert fold_epochs(960, unfloored) == 12

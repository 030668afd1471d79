"""What clean does with its flags: ``clean.action auto`` chooses by the flagged rate, and no flag
is acted on when the fold models learnt too little."""

import itertools
from typing import get_args

import numpy as np
import pandas as pd
import pytest

from curate.curation.clean_actions import action_reasons, choose_action
from curate.curation.label_issues import decide_actions
from curate.curation.removal_cap import Budget
from curate.params import CleanParams


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        (0.0, "drop"),
        (0.115, "drop"),
        (0.199, "drop"),
        (0.2, "relabel"),
        (0.303, "relabel"),
        (0.508, "relabel"),
    ],
)
def test_auto_drops_a_few_flags_and_relabels_many(rate, expected):
    choice = choose_action(CleanParams(), skill=0.8, flagged_rate=rate)
    assert choice.action == expected
    assert choice.why.startswith(f"clean.action auto: {rate:.1%} of the train rows flagged, ")
    assert "clean.relabel_from 0.2" in choice.why


def test_auto_follows_relabel_from():
    assert choose_action(CleanParams(relabel_from=0.5), skill=0.8, flagged_rate=0.3).action == "drop"
    assert choose_action(CleanParams(relabel_from=0.0), skill=0.8, flagged_rate=0.0).action == "relabel"


@pytest.mark.parametrize("action", ["drop", "relabel", "keep"])
def test_an_explicit_action_is_taken_as_set(action):
    choice = choose_action(CleanParams(action=action), skill=0.8, flagged_rate=0.5)
    assert choice.action == action


@pytest.mark.parametrize("action", ["auto", "drop", "relabel"])
def test_fold_models_at_chance_act_on_no_flag(action):
    # The tiny profile's 2-epoch folds: kappa 0.017 with the given labels, 85% of the rows flagged.
    choice = choose_action(CleanParams(action=action), skill=0.017, flagged_rate=0.852)
    assert choice.action == "keep"
    assert choice.why == (
        "the fold models agree with the given labels little more than chance (fold skill 0.02 < "
        "clean.min_fold_skill 0.2): train them longer (folds.epochs)"
    )
    # 50% uniform noise on the demo: kappa 0.42, well above the floor.
    assert choose_action(CleanParams(action=action), skill=0.42, flagged_rate=0.51).action != "keep"


def _modes(field: str) -> tuple[str, ...]:
    """The values ``CleanParams`` allows for ``field`` (a ``Literal``), so a new mode is tested too."""
    return get_args(CleanParams.model_fields[field].annotation)


NAMES = ["zero", "one"]


def _capped_rows() -> pd.DataFrame:
    """40 train rows the cap binds on under every mode: 16 of class one's 20 rows flagged (class
    zero predicted; the even ones confident enough to relabel), and the 4 rows of a small group,
    all class zero and unflagged, asked to go as extra near-duplicates."""
    n = 40
    flagged = (np.arange(n) >= 20) & (np.arange(n) < 36)
    label = np.repeat([0, 1], 20)
    return pd.DataFrame(
        {
            "is_label_issue": flagged,
            "drop_candidate": np.arange(n) < 4,
            "label_quality": np.where(flagged, np.arange(n) / 100, np.where(np.arange(n) < 4, 0.5, 0.9)),
            "label": label,
            "given_label": label,
            "label_name": [NAMES[k] for k in label],
            "group": np.where(np.arange(n) < 4, "small", "big"),
            "predicted_label": np.where(flagged, 0, label),
            "predicted_confidence": np.where(flagged & (np.arange(n) % 2 == 1), 0.6, 0.95),
            "relabel_floor": np.full(n, 0.9),
        }
    )


@pytest.mark.parametrize(("cap", "action"), list(itertools.product(_modes("cap"), _modes("action"))))
def test_a_held_back_row_names_the_budget_and_the_rate_that_held_it(cap, action):
    settings = CleanParams(
        cap=cap, action=action, max_drop_fraction=0.1, min_examples_per_class=3, relabel_min_confidence=0.9
    )
    train = _capped_rows()
    choice = choose_action(settings, skill=0.8, flagged_rate=float(train["is_label_issue"].mean()))
    decision = decide_actions(
        train,
        action=choice.action,
        relabel_floor=train["relabel_floor"].to_numpy(),
        max_drop_fraction=settings.max_drop_fraction,
        cap=settings.cap,
        min_rows=settings.min_examples_per_class,
    )
    actions, holds, sizing = decision.actions, decision.holds, decision.sizing
    assert holds, "the cap binds in every mode"
    # The held rows are those kept though asked to change, each with the one sizing the decision used.
    by_choice = train["is_label_issue"] & (choice.action == "keep") & ~train["drop_candidate"]
    assert set(holds) == set(train.index[(actions == "keep") & ~by_choice])
    assert (sizing.cap, sizing.max_drop_fraction, sizing.min_rows) == (cap, 0.1, 3)
    # The rate the budgets were sized from: the rows asked to be dropped (dropped, or held back
    # from it), never the relabels held back.
    asked_to_drop = (actions == "drop") | train.index.isin(
        [i for i, h in holds.items() if h.request == "drop"]
    )
    assert sizing.asked_rate == pytest.approx(asked_to_drop.mean())
    assert sizing.share == pytest.approx(0.1 + (sizing.asked_rate if cap == "relative" else 0.0))

    rows = train.assign(action=actions, auto_action=actions, action_source="auto")
    reasons = action_reasons(rows, settings, NAMES, choice, holds)
    for index, hold in holds.items():
        row, reason = train.loc[index], reasons[index]
        assert hold.sizing == sizing and hold.spent
        assert hold.request == ("relabel" if choice.action == "relabel" and row["predicted_confidence"] >= 0.9
                                and row["is_label_issue"] else "drop")  # fmt: skip
        assert (
            f"held back from {'relabelling it to zero' if hold.request == 'relabel' else 'dropping it'}"
            in reason
        )
        for budget in hold.spent:
            assert budget.key == row[budget.kind]
            assert budget.rows == (train[budget.kind] == budget.key).sum()
            size = int(np.floor(sizing.share * budget.rows))
            stays = budget.rows - settings.min_examples_per_class
            assert budget.min_rows_bound == (cap == "relative" and stays < size)
            assert budget.size == max(stays if budget.min_rows_bound else size, 0)
            whose = f"class {NAMES[budget.key]}" if budget.kind == "label" else f"group {budget.key}"
            stay = ", clean.min_examples_per_class 3 to stay" if budget.min_rows_bound else ""
            assert (
                f"{whose}'s budget, {budget.size} of its {budget.rows} train rows{stay}, is spent" in reason
            )
        assert "removal cap: (" not in reason  # never a hold that names no budget
        assert f"clean.cap {cap}: a class or group may lose floor({sizing.share:.1%} x its rows)" in reason
        if cap == "relative":
            assert f", {sizing.asked_rate:.1%} of the train rows asked to be dropped + " in reason
        assert "clean.max_drop_fraction 0.1)" in reason


def test_the_relative_cap_with_relabels_is_sized_from_the_drop_requests_alone():
    # 8 confident flags ask to be relabelled, 8 unsure ones and the 4 extras to be dropped: 12 of
    # 40 rows, 30%. The reason once recounted the relabels held back too (40%) and named no budget.
    train = _capped_rows()
    decision = decide_actions(
        train, action="relabel", relabel_floor=0.9, max_drop_fraction=0.1, cap="relative", min_rows=1
    )
    assert decision.sizing.asked_rate == 0.3
    settings = CleanParams(
        cap="relative", action="relabel", max_drop_fraction=0.1, relabel_min_confidence=0.9
    )
    choice = choose_action(settings, skill=0.8, flagged_rate=0.4)
    rows = train.assign(action=decision.actions, auto_action=decision.actions, action_source="auto")
    reasons = action_reasons(rows, settings, NAMES, choice, decision.holds)
    held = reasons[list(decision.holds)]
    # Class one (20 rows) may lose floor(40% x 20) = 8: its 8 most suspicious flags (4 relabelled,
    # 4 dropped); its other 8 stay.
    relabels_held = [i for i, hold in decision.holds.items() if hold.request == "relabel"]
    assert len(relabels_held) == 4 and (decision.actions == "relabel").sum() == 4
    expected = (
        "flagged by cleanlab, held back from relabelling it to zero by the removal cap: class one's "
        "budget, 8 of its 20 train rows, is spent (clean.cap relative: a class or group may lose "
        "floor(40.0% x its rows), 30.0% of the train rows asked to be dropped + clean.max_drop_fraction 0.1)"
    )
    assert (held[relabels_held] == expected).all()
    assert not held.str.contains("40.0% of the train rows").any()


def test_a_class_budget_counts_the_relabels_that_gave_rows_back():
    # Two classes of 10 rows may each lose 1 (absolute 0.1); their flags, confident, swap them,
    # each relabel giving its new class one removal back, until class zero's fifth flag finds
    # its budget spent: 1, plus the 3 rows relabelled into it by then.
    label = np.repeat([0, 1], 10)
    flagged = np.isin(np.arange(20), [0, 1, 2, 3, 4, 10, 11, 12])
    quality = np.full(20, 0.9)
    quality[[0, 10, 1, 11, 2, 12, 3, 4]] = np.arange(8) / 100
    train = pd.DataFrame(
        {
            "is_label_issue": flagged,
            "drop_candidate": False,
            "label_quality": quality,
            "label": label,
            "given_label": label,
            "label_name": [NAMES[k] for k in label],
            "group": "g",
            "predicted_label": np.where(flagged, 1 - label, label),
            "predicted_confidence": 0.95,
            "relabel_floor": 0.9,
        }
    )
    decision = decide_actions(
        train, action="relabel", relabel_floor=0.9, max_drop_fraction=0.1, cap="absolute"
    )
    assert decision.actions[flagged].tolist() == ["relabel"] * 4 + ["keep"] + ["relabel"] * 3
    (hold,) = decision.holds.values()
    assert hold.spent == (Budget("label", 0, rows=10, size=1, given_back=3),)
    settings = CleanParams(action="relabel", relabel_min_confidence=0.9, max_drop_fraction=0.1)
    rows = train.assign(action=decision.actions, auto_action=decision.actions, action_source="auto")
    reason = action_reasons(rows, settings, NAMES, choose_action(settings, 0.8, 0.4), decision.holds)[4]
    assert reason == (
        "flagged by cleanlab, held back from relabelling it to one by the removal cap: class zero's "
        "budget, 1 of its 10 train rows + the 3 relabelled into it, is spent (clean.cap absolute: a "
        "class or group may lose floor(10.0% x its rows), clean.max_drop_fraction 0.1)"
    )

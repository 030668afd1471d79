"""What clean does with its flags: ``clean.action auto`` chooses by the flagged rate, and no flag
is acted on when the fold models learnt too little."""

import pytest

from curate.curation.clean_actions import choose_action
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

"""The demo's class-conditional noise model: flips only between the listed look-alike digits, at
about the listed rates, the same under a seed; the uniform model's draws are untouched."""

import numpy as np
import pytest

from curate.data import demo
from curate.errors import CurateError


# The tests that take it are one xdist_group, so one worker builds it once (not once per worker).
@pytest.fixture(scope="module")
def confused():
    return demo.build_demo(
        seed=0, test_fraction=0.25, label_noise=0.1, minority_keep=0.1, size=28, channels=1,
        subsample=0.5, noise="class_conditional",
    )  # fmt: skip


@pytest.mark.xdist_group("demo_noise_confused")
def test_flips_only_on_the_listed_pairs_at_their_rates(confused):
    _, samples = confused
    train = samples[samples["split"] == "train"]
    flipped = train[train["label"] != train["true_label"]]
    pairs = set(zip(flipped["true_label"], flipped["label"], strict=True))
    assert pairs == {(source, target) for source, (target, _) in demo.CONFUSIONS.items()}
    # The listed shares scaled alike, so that 10% of all train labels flip.
    scale = demo.confusion_shares(0.1, {k: float((train["true_label"] == k).mean()) for k in demo.CONFUSIONS})
    for source, (_, share) in demo.CONFUSIONS.items():
        of_class = train[train["true_label"] == source]
        rate = (of_class["label"] != source).mean()
        assert rate == pytest.approx(scale[source], abs=1 / len(of_class))
        assert scale[source] / share == pytest.approx(scale[1] / demo.CONFUSIONS[1][1])
    assert len(flipped) / len(train) == pytest.approx(0.1, abs=0.005)
    untouched = train[~train["true_label"].isin(list(demo.CONFUSIONS))]
    assert (untouched["label"] == untouched["true_label"]).all()
    test = samples[samples["split"] == "test"]
    assert (test["label"] == test["true_label"]).all()


@pytest.mark.xdist_group("demo_noise_confused")
def test_deterministic_under_seed_and_off_at_zero(confused):
    images, samples = confused
    kwargs = dict(test_fraction=0.25, minority_keep=0.1, size=28, channels=1, subsample=0.5)
    again_images, again = demo.build_demo(seed=0, label_noise=0.1, noise="class_conditional", **kwargs)
    assert np.array_equal(images, again_images) and samples.equals(again)
    other = demo.build_demo(seed=1, label_noise=0.1, noise="class_conditional", **kwargs)[1]
    assert not other["label"].equals(samples["label"])
    oracle = demo.build_demo(seed=0, label_noise=0.0, noise="class_conditional", **kwargs)[1]
    assert (oracle["label"] == oracle["true_label"]).all()
    # The same samples either way: only the labels differ between noise models.
    uniform = demo.build_demo(seed=0, label_noise=0.1, **kwargs)[1]
    assert uniform["sample_id"].equals(samples["sample_id"])
    assert (uniform["label"] != uniform["true_label"]).sum() == round(
        0.1 * (uniform["split"] == "train").sum()
    )


def test_shares_reach_the_asked_rate_with_no_class_past_the_ceiling():
    equal = {k: 0.1 for k in demo.CONFUSIONS}  # seven classes of 10% each: 70% of the labels
    shares = demo.confusion_shares(0.3, equal)
    assert sum(0.1 * share for share in shares.values()) == pytest.approx(0.3)
    assert max(shares.values()) == demo.MAX_FLIP_SHARE
    # The classes under the ceiling keep the listed proportions between them.
    free = [k for k, share in shares.items() if share < demo.MAX_FLIP_SHARE]
    assert free and len({round(shares[k] / demo.CONFUSIONS[k][1], 9) for k in free}) == 1
    with pytest.raises(
        CurateError, match=r"^ingest.demo.label_noise 0.5: .* at most 30.8% of the train labels$"
    ):
        demo.confusion_shares(0.5, equal)

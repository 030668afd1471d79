"""End to end: the template as a user clones it, driven by the real dvc CLI."""

import json
import os
import subprocess

import pytest

from curate.stages.evaluate import HEADLINE
from tests.conftest import set_params, template_copy

pytestmark = pytest.mark.slow


def dvc(*args, cwd):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)


def git_status(cwd):
    return subprocess.run(
        ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A fresh clone of the template after one ``dvc repro`` of the default params."""
    root = template_copy(tmp_path_factory.mktemp("clone"))
    dvc("repro", cwd=root)
    return root


def test_fresh_clone_reproduces_the_committed_lock_and_reports(reproduced):
    # Same code, params and demo data give the same bytes: the committed
    # dvc.lock and reports stay untouched, and dvc sees nothing to do.
    assert git_status(reproduced) == ""
    assert "up to date" in dvc("status", cwd=reproduced).stdout
    assert "didn't change, skipping" in dvc("repro", cwd=reproduced).stdout


def test_outputs_metrics_and_git_ignores(reproduced):
    for path in ("data/raw/images.npy", "data/raw/samples.parquet", "reports/ingest.html"):
        assert (reproduced / path).is_file()
    shown = json.loads(dvc("metrics", "show", "--json", cwd=reproduced).stdout)
    metrics = next(iter(shown.values()))["data"]["reports/metrics/ingest.json"]["data"]
    assert metrics["n_classes"] == 10 and metrics["n_train"] > 3000
    ignored = subprocess.run(
        ["git", "check-ignore", "data/raw/images.npy", "data/raw/samples.parquet"],
        cwd=reproduced, capture_output=True, text=True,
    )
    assert ignored.returncode == 0
    assert "analytics = false" in (reproduced / ".dvc" / "config").read_text()


# A few hundred images, one epoch, two folds: the whole DAG in a few minutes on 2 CPU cores.
TINY_PROFILE = {
    "ingest": {"demo": {"subsample": 0.08}},
    "clean": {"folds": 2, "epochs": 1},
    "augment": {"copies": 1},
    "train": {"epochs": 1},
}
STAGE_FILES = [
    f"reports/{name}"
    for stage in ("ingest", "clean", "rebalance", "augment", "train", "evaluate")
    for name in (f"{stage}.html", f"{stage}.md", f"metrics/{stage}.json")
]


def test_tiny_profile_runs_the_whole_dag_with_metrics_and_plots(tmp_path):
    root = template_copy(tmp_path)
    set_params(root / "params.yaml", **TINY_PROFILE)
    dvc("repro", cwd=root)
    for path in [*STAGE_FILES, "models/model.pt", "reports/plots/confusion.json"]:
        assert (root / path).is_file(), path
    for split in ("train", "val"):
        for name in ("loss", "accuracy"):
            assert (root / f"dvclive/train/plots/metrics/{split}/{name}.tsv").is_file()
    shown = json.loads(dvc("metrics", "show", "--json", cwd=root).stdout)
    data = next(iter(shown.values()))["data"]
    evaluated = data["reports/metrics/evaluate.json"]["data"]
    for key in HEADLINE:
        assert key in evaluated, key
    assert data["reports/metrics/train.json"]["data"]["epochs_run"] == 1
    dvc("plots", "show", cwd=root)
    page = (root / "dvc_plots" / "index.html").read_text()
    assert "Confusion matrix" in page and "Loss by epoch" in page
    assert "didn't change, skipping" in dvc("repro", "evaluate", cwd=root).stdout

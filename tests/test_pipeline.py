"""End to end: the template as a user clones it, driven by the real dvc CLI."""

import json
import os
import subprocess

import pytest
import yaml

from tests.conftest import template_copy

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


# The train stage measures its throughput (images_per_second): the one figure that
# differs between two runs on the same inputs, in these files alone.
MEASURED = {"reports/metrics/train.json", "reports/train.html", "reports/train.md"}


def lock_hashes(text: str) -> dict[str, str]:
    """Path -> md5 of every dep and out in a dvc.lock."""
    hashes = {}
    for stage in yaml.safe_load(text)["stages"].values():
        for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
            hashes[entry["path"]] = entry["md5"]
    return hashes


def test_fresh_clone_reproduces_the_committed_lock_and_reports(reproduced):
    # Same code, params and demo data give the same bytes: the committed dvc.lock,
    # data and reports stay untouched (but for the measured throughput), and dvc
    # sees nothing to do.
    changed = {line[3:] for line in git_status(reproduced).splitlines()}
    assert changed <= {"dvc.lock", *MEASURED}
    committed = subprocess.run(
        ["git", "show", "HEAD:dvc.lock"], cwd=reproduced, capture_output=True, text=True, check=True
    ).stdout
    before, after = lock_hashes(committed), lock_hashes((reproduced / "dvc.lock").read_text())
    assert before.keys() == after.keys()
    assert {path for path in before if before[path] != after[path]} <= MEASURED
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

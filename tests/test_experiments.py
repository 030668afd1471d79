"""The template as a versioning tool, end to end on a tiny profile: cache precision,
experiments, and `curate compare` between them (real dvc and git, in a temp repo)."""

import json
import os
import subprocess
import time

import pytest

from curate.stages.evaluate import HEADLINE
from tests.conftest import set_params, template_copy

pytestmark = pytest.mark.slow

TINY = {
    "ingest": {"demo": {"subsample": 0.08}},
    "clean": {"folds": 2, "epochs": 2, "batch_size": 64},
    "augment": {"copies": 1},
    "train": {"epochs": 1},
}
STAGES = ("ingest", "clean", "rebalance", "augment", "train", "evaluate", "gate")
COLUMNS = (
    "clean.detect_f1", "clean.dropped", "rebalance.group_share_ratio_after",
    "evaluate.accuracy", "evaluate.worst_group_accuracy", "evaluate.accuracy_gap",
)  # fmt: skip
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}
GIT = ["git", "-c", "user.name=curate tests", "-c", "user.email=tests@curate.invalid"]


def run(*args, cwd):
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def ran(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A clone of the template on the tiny profile, reproduced and committed."""
    root = template_copy(tmp_path_factory.mktemp("tiny"))
    set_params(root / "params.yaml", **TINY)
    assert ran(run("dvc", "repro", cwd=root)) == set(STAGES)
    run(*GIT, "add", "-A", cwd=root)
    run(*GIT, "commit", "-q", "-m", "tiny profile", cwd=root)
    return root


def restore(root):
    run("git", "checkout", "--", ".", cwd=root)
    run("dvc", "checkout", "--force", cwd=root)
    assert "up to date" in run("dvc", "status", cwd=root)


def test_every_report_metric_and_plot_exists(tiny):
    for stage in STAGES:
        assert (tiny / "reports" / f"{stage}.html").is_file()
        assert (tiny / "reports" / f"{stage}.md").is_file()
        assert json.loads((tiny / "reports" / "metrics" / f"{stage}.json").read_text())
    for path in ("reports/index.html", "reports/index.md", "models/model.pt", "reports/plots/confusion.json"):
        assert (tiny / path).is_file(), path
    for split in ("train", "val"):
        for name in ("loss", "accuracy"):
            assert (tiny / f"dvclive/train/plots/metrics/{split}/{name}.tsv").is_file()
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=tiny))
    data = next(iter(shown.values()))["data"]
    evaluated = data["reports/metrics/evaluate.json"]["data"]
    for key in HEADLINE:
        assert key in evaluated, key
    assert data["reports/metrics/train.json"]["data"]["epochs_run"] == 1
    run("dvc", "plots", "show", cwd=tiny)
    page = (tiny / "dvc_plots" / "index.html").read_text()
    assert "Confusion matrix" in page and "Loss by epoch" in page


def test_noop_repro_runs_nothing(tiny):
    assert ran(run("dvc", "repro", cwd=tiny)) == set()


def test_train_param_reruns_exactly_train_evaluate_gate(tiny):
    set_params(tiny / "params.yaml", train={"epochs": 2})
    try:
        assert ran(run("dvc", "repro", cwd=tiny)) == {"train", "evaluate", "gate"}
    finally:
        restore(tiny)


def test_clean_param_reruns_clean_and_downstream_not_ingest(tiny):
    set_params(tiny / "params.yaml", clean={"max_drop_fraction": 0.05})
    try:
        assert ran(run("dvc", "repro", cwd=tiny)) == set(STAGES) - {"ingest"}
    finally:
        restore(tiny)


def exp_metrics(show: list, name: str) -> dict:
    """The flattened metrics of experiment ``name`` in ``dvc exp show --json`` output."""
    for entry in show:
        for exp in [entry, *(entry.get("experiments") or [])]:
            for revision in exp.get("revs", [exp]):
                if revision.get("name") == name:
                    metrics = {}
                    for path, content in (revision["data"].get("metrics") or {}).items():
                        stage = os.path.basename(path).removesuffix(".json")
                        metrics |= {f"{stage}.{k}": v for k, v in content["data"].items()}
                    return metrics
    raise AssertionError(f"experiment {name} not in dvc exp show")


def test_experiments_show_data_quality_next_to_model_metrics(tiny):
    run("dvc", "exp", "run", "-n", "keep", "-S", "clean.action=keep", cwd=tiny)
    # exp run leaves its result in the workspace: back to HEAD, so the next one starts from there.
    restore(tiny)
    run("dvc", "exp", "run", "--queue", "-n", "unbalanced", "-S", "rebalance.strategy=none", cwd=tiny)
    run("dvc", "queue", "start", "-j", "1", cwd=tiny)
    deadline = time.monotonic() + 600
    while "Queued" in (status := run("dvc", "queue", "status", cwd=tiny)) or "Running" in status:
        assert time.monotonic() < deadline, status
        time.sleep(3)
    show = json.loads(run("dvc", "exp", "show", "--json", cwd=tiny))
    keep, unbalanced = exp_metrics(show, "keep"), exp_metrics(show, "unbalanced")
    for metrics in (keep, unbalanced):
        for column in COLUMNS:
            assert isinstance(metrics[column], int | float), column
    assert keep["clean.dropped"] == 0
    assert unbalanced["clean.dropped"] > 0  # queued from HEAD (action drop), not from the keep run
    assert unbalanced["rebalance.group_share_ratio_after"] == unbalanced["rebalance.group_share_ratio_before"]

    review = run("curate", "compare", "HEAD", "keep", cwd=tiny)
    assert "| clean.action | drop | keep |" in review
    added = int(review.split(" added,")[0].rsplit("\n", 1)[-1].replace(",", ""))
    assert added > 0  # the rows the default run dropped are back in play

"""The template as a versioning tool, end to end on a tiny profile: cache precision,
experiments, a `dvc exp show` that fits a terminal, and `curate compare` between them
(real dvc and git, in a temp repo)."""

import json
import os
import re
import shlex
import sys
import time

import numpy as np
import pytest
from PIL import Image

from curate.cli import main as curate_main
from curate.people.declared import declarations
from curate.stage import flatten
from tests.conftest import (  # noqa: F401  (TINY, tiny_project: other modules import them from here)
    ENV,
    GIT,
    REPO,
    STAGES,
    TINY,
    ran,
    run,
    set_params,
    template_copy,
    tiny_project,
)

pytestmark = pytest.mark.slow

TRAINING = {"folds", "train"}
COLUMNS = (
    "clean.detect_f1", "clean.dropped", "rebalance.group_share_ratio_after",
    "evaluate.accuracy", "evaluate.worst_group_accuracy", "evaluate.accuracy_gap",
)  # fmt: skip
MAX_METRIC_COLUMNS = 20
HEADLINE = {name: stage.metrics for name, stage in declarations(REPO / "dvc.yaml").items()}


@pytest.fixture
def tiny(tiny_copy):
    """The tiny profile, reproduced and committed: this test's own copy of the session's run (the
    tests edit params, run experiments, and may run on any xdist worker in any order)."""
    return tiny_copy


def restore(root):
    run("git", "checkout", "--", ".", cwd=root)
    run("dvc", "checkout", "--force", cwd=root)
    assert "up to date" in run("dvc", "status", cwd=root)


def metric_columns(files: dict) -> set[str]:
    """The ``dvc exp show`` columns of one revision's metrics: ``{path: {"data": {...}}}`` flattened."""
    return {f"{path}:{key}" for path, content in files.items() for key in flatten(content.get("data") or {})}


def test_every_report_metric_and_plot_exists(tiny):
    for stage in set(STAGES) - TRAINING:  # the trainings write data and lineage, no report
        assert (tiny / "reports" / f"{stage}.html").is_file()
        assert (tiny / "reports" / f"{stage}.md").is_file()
        headline = json.loads((tiny / "reports" / "metrics" / f"{stage}.json").read_text())
        assert headline and set(headline) <= set(HEADLINE[stage]), stage
        assert json.loads((tiny / "reports" / "details" / f"{stage}.json").read_text()), stage
    for path in ("reports/index.html", "reports/index.md", "models/model.pt", "reports/plots/confusion.json"):
        assert (tiny / path).is_file(), path
    for split in ("train", "val"):
        for name in ("loss", "accuracy"):
            assert (tiny / f"dvclive/train/plots/metrics/{split}/{name}.tsv").is_file()
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=tiny))
    data = next(iter(shown.values()))["data"]
    assert set(data["reports/metrics/evaluate.json"]["data"]) == set(HEADLINE["evaluate"])
    assert len(metric_columns(data)) <= MAX_METRIC_COLUMNS
    details = {
        stage: json.loads((tiny / f"reports/details/{stage}.json").read_text())
        for stage in set(STAGES) - TRAINING
    }
    assert details["train_report"]["epochs_run"] == 1 and "images_per_second" in details["train_report"]
    evaluated = details["evaluate"]  # the per-class and per-group figures, out of dvc exp show
    assert len(evaluated["per_class"]) == 10 and set(evaluated["by_group"]) == {"mnist", "sklearn"}
    run("dvc", "plots", "show", cwd=tiny)
    page = (tiny / "dvc_plots" / "index.html").read_text()
    assert "Confusion matrix" in page and "Loss by epoch" in page


def test_noop_repro_runs_nothing(tiny):
    assert ran(run("dvc", "repro", cwd=tiny)) == set()


def test_editing_a_report_template_reruns_no_training(tiny):
    # dvc status names the stages whose own deps changed: those dvc repro would run first. A
    # report stage re-run writes the same data bytes (test_pipeline.py::test_same_machine_same_bytes),
    # so nothing downstream of them runs either: no training.
    template = tiny / "src/curate/report/templates/base.html"
    template.write_text(template.read_text() + "\n")
    status = run("dvc", "status", cwd=tiny)
    changed = set(re.findall(r"^(\w+):$", status, flags=re.MULTILINE))
    assert changed == set(STAGES) - TRAINING, status  # every report, and neither training


def in_process(capsys, *argv: str) -> str:
    """``curate ARGV``'s stdout, run in this process."""
    capsys.readouterr()
    assert curate_main(list(argv)) == 0
    return capsys.readouterr().out


def exp_revisions(show: list) -> list[dict]:
    """Every revision in ``dvc exp show --json`` output: baselines and their experiments."""
    return [revision for entry in show for exp in [entry, *(entry.get("experiments") or [])]
            for revision in exp.get("revs", [exp])]  # fmt: skip


def exp_metrics(show: list, name: str) -> tuple[str, dict]:
    """The commit and the flattened metrics of experiment ``name`` in ``dvc exp show --json`` output."""
    for revision in exp_revisions(show):
        if revision.get("name") == name:
            metrics = {}
            for path, content in (revision["data"].get("metrics") or {}).items():
                stage = os.path.basename(path).removesuffix(".json")
                metrics |= {f"{stage}.{k}": v for k, v in content["data"].items()}
            return revision["rev"], metrics
    raise AssertionError(f"experiment {name} not in dvc exp show")


def readme_exp_show_views() -> list[str]:
    """The ``dvc exp show`` commands docs/experiments.md gives for a 120-column terminal."""
    readme = (REPO / "docs" / "experiments.md").read_text()
    views = re.findall(r"^(dvc exp show --only-changed --drop '.+')$", readme, flags=re.MULTILINE)
    assert len(views) == 2, views
    return views


def test_experiments_show_data_quality_next_to_model_metrics(tiny, capsys):
    # A data experiment run at once, and a model experiment queued: the cheapest pair that moves
    # both kinds of figure (rebalance onward, train onward) and runs the queue.
    run("dvc", "exp", "run", "-n", "unbalanced", "-S", "rebalance.strategy=none", cwd=tiny)
    # exp run leaves its result in the workspace: back to HEAD, so the next one starts from there.
    restore(tiny)
    run("dvc", "exp", "run", "--queue", "-n", "longer", "-S", "train.epochs=2", cwd=tiny)
    run("dvc", "queue", "start", "-j", "1", cwd=tiny)
    deadline = time.monotonic() + 600
    while "Queued" in (status := run("dvc", "queue", "status", cwd=tiny)) or "Running" in status:
        assert time.monotonic() < deadline, status
        time.sleep(3)
    show = json.loads(run("dvc", "exp", "show", "--json", cwd=tiny))
    (unbalanced_rev, unbalanced), (_, longer) = exp_metrics(show, "unbalanced"), exp_metrics(show, "longer")
    for metrics in (unbalanced, longer):
        for column in COLUMNS:
            assert isinstance(metrics[column], int | float), column
    # Not a metric any more: the before figure is a detail, in git with the experiment's commit.
    details = json.loads(run("git", "show", f"{unbalanced_rev}:reports/details/rebalance.json", cwd=tiny))
    assert unbalanced["rebalance.group_share_ratio_after"] == details["group_share_ratio_before"] < 1
    # Queued from HEAD (strategy group), not from the unbalanced run's workspace.
    assert longer["rebalance.group_share_ratio_after"] == 1.0
    # A train param re-runs exactly the training and what reads the model: no data stage.
    assert ran(run("dvc", "queue", "logs", "longer", cwd=tiny)) == {
        "train",
        "train_report",
        "evaluate",
        "gate",
    }
    columns = set().union(*(metric_columns(rev["data"].get("metrics") or {}) for rev in exp_revisions(show)))
    assert len(columns) <= MAX_METRIC_COLUMNS, sorted(columns)

    # The docs' views fit a 120-column terminal: through the pager DVC draws the table at its
    # full width (wider would scroll), without it rich squeezes it to COLUMNS (wider would show …).
    for view in readme_exp_show_views():
        for pager in ([], ["--no-pager"]):
            table = run(*shlex.split(view), *pager, cwd=tiny, env={**ENV, "COLUMNS": "120"})
            assert "unbalanced" in table and "longer" in table and "rebalance.strategy" in table, table
            assert max(map(len, table.splitlines())) <= 120 and "…" not in table, table

    # curate exps, on DVC's own record of the two: one block at 120 columns (the command as people
    # run it, its width from $COLUMNS), wrapped at 80 and as Markdown (from the same record, here).
    recorded = tiny / "show.json"
    recorded.write_text(json.dumps(show))
    for width, blocks in ((120, 1), (80, 2)):
        if width == 120:
            table = run("curate", "exps", cwd=tiny, env={**ENV, "COLUMNS": str(width)})
        else:
            table = in_process(capsys, "exps", "--json", str(recorded), "--width", str(width))
        assert max(map(len, table.splitlines())) <= width and "…" not in table, table
        assert table.count("\nexperiment ") + table.startswith("experiment ") >= blocks, table
        for name in ("unbalanced", "longer", "master"):
            assert len(re.findall(rf"^{name} ", table, flags=re.MULTILINE)) >= blocks, (name, table)
    markdown = in_process(capsys, "exps", "--json", str(recorded), "--md")
    assert "| unbalanced |" in markdown and "| longer |" in markdown and "| strategy |" in markdown

    review = run("curate", "compare", "HEAD", "unbalanced", cwd=tiny)
    assert "| rebalance.strategy | group | none |" in review
    reweighted = re.search(
        r"^[\d,]+ added, [\d,]+ removed, [\d,]+ relabelled, ([\d,]+) reweighted", review, re.M
    )
    assert reweighted and int(reweighted.group(1).replace(",", "")) > 0  # the group weights are gone
    changed = re.findall(r"^\| (\w+)\.(\w+) \|", review.split("## Metrics that changed", 1)[1], re.M)
    assert any(key not in HEADLINE.get(stage, ()) for stage, key in changed)  # details are compared too


def test_twenty_classes_keep_the_metrics_under_twenty_columns(tmp_path):
    """A 20-class ImageFolder with two groups: per-class figures go to the details, not to dvc exp show."""
    root = template_copy(tmp_path / "repo")
    source, rng, rows = root / "data" / "source", np.random.default_rng(0), ["path,group"]
    for k in range(20):
        (source / f"class{k:02d}").mkdir(parents=True)
        for i in range(8):  # 2 x 4 per class and group: 1 to test, 3 to train, 2 folds
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                source / f"class{k:02d}/{i}.png"
            )
            rows.append(f"class{k:02d}/{i}.png,{'ab'[i % 2]}")
    (source / "metadata.csv").write_text("\n".join(rows) + "\n")
    # Every row kept and a quarter to validation: 1 of the 3 train rows of each class x group.
    set_params(
        root / "params.yaml",
        ingest={"source": "data/source"},
        folds={"k": 2, "epochs": 1},
        clean={"action": "keep"},
        augment={"copies": 1},
        train={"epochs": 1, "val_fraction": 0.25},
    )
    # The stages in DAG order in one process, as dvc repro would run them (without its nine
    # interpreter starts: what is checked here is the metrics files, not DVC's scheduling).
    stages = ", ".join(repr(stage) for stage in STAGES)
    run(
        sys.executable,
        "-c",
        f"from curate.cli import main\nfor s in ({stages}):\n    assert main([s]) == 0",
        cwd=root,
    )
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=root))
    columns = metric_columns(next(iter(shown.values()))["data"])
    assert len(columns) <= MAX_METRIC_COLUMNS, sorted(columns)
    details = json.loads((root / "reports/details/evaluate.json").read_text())
    assert len(details["per_class"]) == 20 and set(details["by_group"]) == {"a", "b"}

"""``curate compare`` where the data is in no cache: a fresh clone without a DVC remote."""

import json
import subprocess

from curate.people.compare import added_decisions
from curate.report.render import split_figures
from tests.conftest import set_params, template_copy

GIT = ["git", "-c", "user.name=curate tests", "-c", "user.email=tests@curate.invalid"]


def compare(root) -> str:
    result = subprocess.run(["curate", "compare"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_fresh_clone_compares_by_figures_and_says_so(tmp_path):
    root = template_copy(tmp_path / "clone")
    set_params(root / "params.yaml", folds={"epochs": 3})
    metrics_path = root / "reports" / "metrics" / "clean.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["dropped"] += 5  # a headline figure, in the metrics file
    metrics_path.write_text(json.dumps(metrics))
    output = compare(root)
    lines = output.splitlines()
    assert lines[2].startswith("Compared by figures only")
    assert "data/balanced/samples.parquet of HEAD and workspace" in lines[2]
    assert "## Data" not in output
    assert "| folds.epochs | 12 | 3 |" in output
    assert f"| clean.dropped | {metrics['dropped'] - 5} | {metrics['dropped']} | +5 |" in output
    assert "| reports/clean.md | same |" in output


def test_compare_reads_details_and_a_revision_from_before_the_split(tmp_path):
    """HEAD has every figure in reports/metrics/ (the layout before details existed); the
    workspace splits them as write_stage does: details are compared, a moved figure is no change."""
    root = template_copy(tmp_path / "clone")
    reports = root / "reports"
    old = {
        "clean": {"flagged": 100, "dropped": 100, "flagged_rate": 0.1, "outliers": 7,
                  "detect_recall_by_group": {"a": 0.5, "b": 0.25}},
        "gate": {"passed": True, "gates": {"max_flagged_rate": {"passed": True}}},
    }  # fmt: skip
    for stage, figures in old.items():
        (reports / "metrics" / f"{stage}.json").write_text(json.dumps(figures))
        (reports / "details" / f"{stage}.json").unlink(missing_ok=True)
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "metrics only"], cwd=root, check=True)

    new = {
        "clean": old["clean"] | {"flagged": 105, "detect_recall_by_group": {"a": 0.5, "b": 0.75}},
        "gate": {"passed": False, "gates": {"max_flagged_rate": {"passed": False}}},
    }
    (reports / "details").mkdir(exist_ok=True)
    for stage, figures in new.items():
        headline, details = split_figures(stage, figures)
        (reports / "metrics" / f"{stage}.json").write_text(json.dumps(headline))
        (reports / "details" / f"{stage}.json").write_text(json.dumps(details))
    output = compare(root)
    assert "| clean.flagged | 100 | 105 | +5 |" in output
    assert "| clean.detect_recall_by_group.b | 0.2500 | 0.7500 | +0.5000 |" in output
    assert "clean.outliers" not in output and "clean.dropped" not in output  # moved, not changed
    assert "| max_flagged_rate | pass | FAIL |" in output
    assert "| all gates | pass | FAIL |" in output


LEDGER_HEADER = "sample_id,path,decision,label,reviewer,note\n"


def test_added_decisions_are_the_ledger_rows_new_in_b():
    a = LEDGER_HEADER + "e1,,drop,,ann,\nd2,,keep,,ann,\n"
    # Columns reordered, one row changed (d2: keep -> relabel), one new, one unchanged.
    b = (
        "decision,sample_id,path,label,reviewer,note\n"
        "drop,e1,,,ann,\nrelabel,d2,,cat,bob,\nkeep,,x/1.png,,bob,a|b\n"
    )
    # Rows read in the ledger's columns, the audit cell (a band) last: empty in a ledger from before audits.
    assert added_decisions(a.encode(), b.encode()) == [
        ["d2", "", "relabel", "cat", "bob", "", ""],
        ["", "x/1.png", "keep", "", "bob", "a|b", ""],
    ]
    assert added_decisions(None, a.encode()) == [
        ["e1", "", "drop", "", "ann", "", ""],
        ["d2", "", "keep", "", "ann", "", ""],
    ]
    assert added_decisions(a.encode(), None) == []


def test_compare_lists_decisions_added_since_a_revision(tmp_path):
    root = template_copy(tmp_path / "clone")
    ledger = root / "data" / "review" / "decisions.csv"
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.write_text(LEDGER_HEADER + "e1,,drop,,ann,\n")
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "a first decision"], cwd=root, check=True)
    ledger.write_text(LEDGER_HEADER + "e1,,drop,,ann,\ne2,,relabel,<b>x</b>,bob,\n")
    output = compare(root)
    assert (
        "## Review decisions added\n\nRows of the review ledger in workspace that HEAD lacks: 1\n" in output
    )
    assert "| e2 |  | relabel | &lt;b&gt;x&lt;/b&gt; | bob |  |" in output
    assert "| e1 |" not in output

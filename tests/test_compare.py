"""``curate compare`` where the data is in no cache: a fresh clone without a DVC remote."""

import json
import subprocess

from tests.conftest import set_params, template_copy


def test_fresh_clone_compares_by_figures_and_says_so(tmp_path):
    root = template_copy(tmp_path / "clone")
    set_params(root / "params.yaml", clean={"epochs": 3})
    metrics_path = root / "reports" / "metrics" / "clean.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["flagged"] += 5
    metrics_path.write_text(json.dumps(metrics))
    result = subprocess.run(["curate", "compare"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].startswith("Compared by figures only")
    assert "data/balanced/samples.parquet of HEAD and workspace" in lines[2]
    assert "## Data" not in result.stdout
    assert "| clean.epochs | 8 | 3 |" in result.stdout
    assert f"| clean.flagged | {metrics['flagged'] - 5} | {metrics['flagged']} | +5 |" in result.stdout
    assert "| reports/clean.md | same |" in result.stdout

"""Adding a stage as docs/adding-a-stage.md says touches its module, its templates, dvc.yaml and
params.yaml, and nothing else of the package; the stage then runs under ``dvc repro`` with its own
params section and gate, and shows wherever a stage shows.

The example stage's files are the fenced blocks of the docs page (```lang file=PATH```), so the
page and this test cannot drift apart.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

DOC = REPO / "docs" / "adding-a-stage.md"
BLOCK = re.compile(r"^```\w+ file=(\S+)(?: (\w+)=(\S+))?\n(.*?)^```", re.S | re.M)
NEW_FILES = {
    "src/curate/stages/export.py",
    "src/curate/report/templates/export.html",
    "src/curate/report/templates/export.md",
}


def doc_blocks() -> list[tuple[str, str, str, str]]:
    """``(path, where, value, text)`` of each block the walk-through asks to write."""
    return BLOCK.findall(DOC.read_text(encoding="utf-8"))


def insert_after(text: str, anchor: str, lines: str) -> str:
    """``lines`` after the first line of ``text`` that matches the regex ``anchor``."""
    match = re.search(anchor, text, re.M)
    assert match, anchor
    end = text.index("\n", match.end()) + 1
    return text[:end] + lines + text[end:]


def add_stage(root: Path) -> None:
    """Do what the walk-through says, block by block."""
    for path, where, value, text in doc_blocks():
        target = root / path
        if path == "dvc.yaml" and where == "stage":  # more deps for an existing stage
            gate = re.search(rf"^  {value}:\n(?:    .*\n|\s*\n)*?    deps:\n", target.read_text(), re.M)
            assert gate, value
            current = target.read_text()
            target.write_text(current[: gate.end()] + text + current[gate.end() :])
        elif path == "dvc.yaml":  # a new stage, before the gate
            target.write_text(target.read_text().replace("\n  gate:\n", f"\n{text}  gate:\n", 1))
        elif path == "params.yaml" and where == "section":
            target.write_text(insert_after(target.read_text(), rf"^{value}:", text))
        elif path == "params.yaml":
            target.write_text(target.read_text() + text)
        else:
            assert not target.exists(), path
            target.write_text(text)


def run(*command: str, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert not check or done.returncode == 0, f"{command}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def ran(output: str) -> set[str]:
    return set(re.findall(r"^Running stage '([\w-]+)'", output, re.M))


def test_the_docs_name_each_place_once():
    paths = [path for path, *_ in doc_blocks()]
    assert set(paths) == NEW_FILES | {"dvc.yaml", "params.yaml"}


@pytest.mark.slow
def test_an_added_stage_runs_with_its_params_and_gate_and_shows_everywhere(tiny_copy):
    # The template on the tiny profile, reproduced and committed: only export and gate run below.
    root = tiny_copy
    add_stage(root)
    # The copy's own package, not the checkout this test runs from.
    env = os.environ | {"PYTHONPATH": str(root / "src"), "DVC_NO_ANALYTICS": "1"}
    curate = [sys.executable, "-m", "curate.cli"]
    run(*curate, "deps", "--write", cwd=root, env=env)
    assert run(*curate, "deps", cwd=root, env=env).stdout == ""

    changed = run("git", "status", "--porcelain", "--untracked-files=all", cwd=root, env=env).stdout
    touched = {line[3:] for line in changed.splitlines()}
    assert {p for p in touched if p.startswith("src/")} == NEW_FILES
    assert touched - NEW_FILES == {"dvc.yaml", "params.yaml"}

    assert ran(run("dvc", "repro", cwd=root, env=env).stdout) == {"export", "gate"}
    trained = pd.read_parquet(root / "data/augmented/samples.parquet")
    trained = trained[(trained["split"] == "train") & (trained.get("action", "keep") != "drop")]
    manifest = pd.read_parquet(root / "data/export/manifest.parquet")
    assert sorted(manifest["sample_id"]) == sorted(trained["sample_id"])
    assert list(manifest.columns) == ["sample_id", "path", "label_name", "group", "weight", "copies"]

    # Its gate in its own report and on the data card, checked by the gate stage.
    assert "export.rows (gates.min_rows)" in (root / "reports/export.md").read_text()
    card = (root / "reports/index.md").read_text()
    assert "## export" in card and "export.rows (gates.min_rows)" in card
    gates = json.loads((root / "reports/details/gate.json").read_text())["gates"]
    assert gates["min_rows"] == {"threshold": 100, "observed": len(manifest), "passed": len(manifest) >= 100}
    # Its headline figure is a column of dvc exp show.
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=root, env=env).stdout)
    metrics = next(iter(shown.values()))["data"]
    assert metrics["reports/metrics/export.json"]["data"] == {"rows": len(manifest)}
    # ...and of curate exps, from its declaration (view and glance).
    table = run(*curate, "exps", "--csv", cwd=root, env=env).stdout
    assert "export.rows" in table.splitlines()[0].split(",")
    # curate trace follows a sample into its table.
    sample = manifest["sample_id"].iloc[0]
    traced = run(*curate, "trace", sample, cwd=root, env=env).stdout
    assert "## export (data/export/manifest.parquet)" in traced

    # A typo in its section or its gate is refused, naming the key and the closest one.
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace("  originals_only:", "  originals_onyl:"))
    refused = run(sys.executable, "-m", "curate.stages.export", cwd=root, env=env, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        "params.yaml: export.originals_onyl: unknown key (did you mean export.originals_only?)"
    )
    # Under dvc repro: a misspelt gate beside the real one re-runs the gate stage, which refuses it.
    (root / "params.yaml").write_text(params.replace("  min_rows: 100\n", "  min_rows: 100\n  min_rowz: 5\n"))
    refused = run("dvc", "repro", cwd=root, env=env, check=False)
    assert refused.returncode != 0
    assert "gates.min_rowz: unknown key (did you mean gates.min_rows?)" in refused.stdout + refused.stderr

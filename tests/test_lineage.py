"""Every stage's figures trace to the data they describe (``reports/lineage/<stage>.json``), and
the gate stage shows a stage whose data has changed since as stale, failing its gates."""

import contextlib
import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from curate import dag
from curate.cli import main as cli_main
from curate.curation.gates import stale_stages
from curate.data.atomic import write_bytes
from curate.data.image_rows import read_images, write_images
from curate.data.lineage import Lineage, file_digest
from curate.data.samples import read_samples, write_samples
from curate.params import Params
from curate.report import Verdict
from curate.report.render import read_figures
from curate.report.writer import write_stage
from curate.stages import gate
from tests.conftest import REPO, set_params
from tests.test_dataset import table
from tests.test_gates import write_metrics

# The gate templates are the smallest a test can render for a stand-in stage.
CONTEXT = {"verdict": Verdict(), "enforce": False, "gates": [], "stale": {}}


def sha256(path) -> str:
    """A file's SHA-256; a pixel store's is its index's (its segments are named by content)."""
    path = Path(path) / "index.json" if Path(path).is_dir() else Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lineage_of(root: Path, stage: str = "gate") -> dict:
    """What a stage recorded of the files it read and wrote (its run record checked apart)."""
    record = json.loads((root / "reports" / "lineage" / f"{stage}.json").read_text())
    assert record.pop("run") == gate.STAGE.record(Params())
    return record


def write_gate_report(figures: dict, lineage: Lineage | None) -> None:
    write_stage(gate.STAGE, Params(), figures, {**CONTEXT, "verdict": Verdict()}, lineage)


def test_a_stage_records_the_data_it_read_and_wrote(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lineage = Lineage()
    images = np.zeros((4, 3, 3, 1), dtype=np.uint8)
    write_images(lineage.output("data/raw/images"), images)
    write_samples(lineage.output("data/raw/samples.parquet"), table())
    write_gate_report({"n": 1}, lineage)
    raw = {path: sha256(path) for path in ("data/raw/images", "data/raw/samples.parquet")}
    assert lineage_of(tmp_path) == {"inputs": {}, "outputs": raw}

    # The next stage: an absolute path is recorded relative to the workspace; the reports
    # (html, md, metrics, the lineage itself) are not data and are left out.
    runs = []
    for _ in range(2):
        lineage = Lineage()
        read_samples(lineage.input(tmp_path / "data/raw/samples.parquet"))
        read_images(lineage.input("data/raw/images"))
        write_samples(lineage.output("data/clean/samples.parquet"), table())
        write_gate_report({"n": 1}, lineage)
        runs.append((tmp_path / "reports/lineage/gate.json").read_bytes())
    assert lineage_of(tmp_path) == {
        "inputs": raw,
        "outputs": {"data/clean/samples.parquet": sha256("data/clean/samples.parquet")},
    }
    assert runs[0] == runs[1]  # same data, same bytes: no diff in git


def test_write_stage_without_lineage_writes_none_and_a_write_alone_records_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_bytes("data/x.bin", b"x")  # not named to any lineage: no module keeps a record of it
    write_gate_report({}, None)
    assert not (tmp_path / "reports/lineage").exists()
    write_gate_report({}, Lineage())
    assert lineage_of(tmp_path) == {"inputs": {}, "outputs": {}}


def test_file_digest_reads_in_chunks(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 3 * 2**20 + 17, dtype=np.uint8).tobytes())
    assert file_digest(path) == sha256(path)
    assert file_digest(tmp_path / "nope") is None and file_digest(tmp_path) is None


def test_stale_stages_on_hand_made_records():
    now = {"raw": "r1", "clean": "c1", "model": "m2", "aug": "a1"}
    lineages = {
        "ingest": {"inputs": {}, "outputs": {"raw": "r1"}},
        "clean": {"inputs": {"raw": "r0"}, "outputs": {"clean": "c1"}},  # raw changed since
        "rebalance": {"inputs": {"clean": "c1"}, "outputs": {"bal": "b1"}},  # bal since deleted
        "augment": {"inputs": {"raw": "r1"}, "outputs": {"aug": "a1"}},
        "train": {"inputs": {"aug": "a1"}, "outputs": {"model": "m1"}},  # killed after saving m2
        "evaluate": {"inputs": {"model": "m2", "aug": "a1"}, "outputs": {}},
    }
    stale = stale_stages(lineages, now.get)
    assert stale == {
        "clean": "its input raw changed since it ran",
        "rebalance": "its output bal is missing",
        "train": "its output model changed since it ran",
        "evaluate": "upstream stage train is stale",
    }
    assert stale_stages({**lineages, "ingest": None}, now.get)["ingest"].startswith("no lineage record")
    # Read from a stale stage: stale too, even when the file itself is the one recorded.
    lineages["augment"]["inputs"] = {"bal": None, "clean": "c1"}
    assert stale_stages(lineages, now.get)["augment"] == "upstream stages clean, rebalance are stale"
    current = {stage: {"inputs": {"raw": "r1"}, "outputs": {}} for stage in dag.reporting(REPO / "dvc.yaml")}
    assert stale_stages(current, now.get) == {}


def write_lineage(root: Path, stage: str, inputs=(), outputs=()) -> None:
    record = {
        "inputs": {p: sha256(root / p) for p in inputs},
        "outputs": {p: sha256(root / p) for p in outputs},
        "run": json.loads((root / "reports/lineage" / f"{stage}.json").read_text())["run"],
    }
    (root / "reports/lineage" / f"{stage}.json").write_text(json.dumps(record))


def test_gate_marks_stale_stages_and_leaves_their_figures_out(workdir, capsys):
    write_metrics(workdir)
    for path in ("data/augmented/samples.parquet", "models/model.pt"):
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).write_bytes(path.encode())
    write_lineage(workdir, "augment", outputs=["data/augmented/samples.parquet"])
    write_lineage(workdir, "train", ["data/augmented/samples.parquet"], ["models/model.pt"])
    write_lineage(workdir, "train_report", ["models/model.pt"])  # the report of what train wrote
    write_lineage(workdir, "evaluate", ["data/augmented/samples.parquet", "models/model.pt"])
    assert gate.main([]) == 0
    assert "stale" not in capsys.readouterr().err
    assert "| best_val_accuracy | 0.900 |" in (workdir / "reports/index.md").read_text()

    # augment re-ran (as with `curate augment`) and wrote other data; train and evaluate did not.
    (workdir / "data/augmented/samples.parquet").write_bytes(b"other rows")
    write_lineage(workdir, "augment", outputs=["data/augmented/samples.parquet"])
    set_params(workdir / "params.yaml", gates={"enforce": True})
    assert gate.main([]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[:3] == [
        "gate failed: train is stale: its input data/augmented/samples.parquet changed since it ran",
        "gate failed: train_report is stale: upstream stage train is stale",
        "gate failed: evaluate is stale: its input data/augmented/samples.parquet changed since it ran",
    ]
    assert "gate failed: evaluate.accuracy (gates.min_accuracy): observed stale, required ≥ 0.95" in lines
    result = read_figures("gate", workdir / "reports")
    assert result["passed"] is False
    assert result["gates"]["min_accuracy"] == {"observed": "stale", "passed": False, "threshold": 0.95}
    assert result["gates"]["max_frechet_distance"]["observed"] == 0.1  # augment is current
    card = (workdir / "reports/index.md").read_text()
    assert "## train_report: stale" in card and "## evaluate: stale" in card and "## augment: pass" in card
    assert "| best_val_accuracy |" not in card and "| accuracy_gap |" not in card  # figures left out
    assert "| evaluate.accuracy (gates.min_accuracy) | stale | ≥ 0.95 | **FAIL** |" in card
    gate_md = (workdir / "reports/gate.md").read_text()
    assert "- evaluate is stale: its input data/augmented/samples.parquet changed since it ran" in gate_md
    assert 'class="bad">stale</span>' in (workdir / "reports/index.html").read_text()

    (workdir / "reports/lineage/ingest.json").unlink()
    gate.main([])
    assert capsys.readouterr().err.startswith("gate failed: ingest is stale: no lineage record")


def test_dvc_yaml_keeps_lineage_out_of_the_metrics_and_gate_depends_on_it():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    data_outs = set()
    for stage in dag.reporting(REPO / "dvc.yaml"):
        outs = {next(iter(out)) if isinstance(out, dict) else out: out for out in stages[stage]["outs"]}
        lineage = f"reports/lineage/{stage}.json"
        assert outs[lineage] == {lineage: {"cache": False}}, stage  # git carries it next to dvc.lock
        assert lineage not in json.dumps(stages[stage].get("metrics", [])), stage  # no dvc exp show column
        data_outs |= {path for path in outs if path.startswith(("data/", "models/")) and "." in path}
    gate_deps = set(stages["gate"]["deps"])
    assert {f"reports/lineage/{stage}.json" for stage in dag.reporting(REPO / "dvc.yaml")} <= gate_deps
    assert data_outs <= gate_deps  # dvc repro re-runs gate when any file it hashes changes


def test_a_checkpoint_named_as_input_is_recorded(tmp_path, monkeypatch):
    # The checkpoint loader is a reader of the data contract too (evaluate reads models/model.pt).
    from curate.learning.checkpoint import load_checkpoint, save_checkpoint
    from curate.learning.networks import build_model

    monkeypatch.chdir(tmp_path)
    meta = {"name": "cnn", "n_classes": 2, "channels": 1, "size": 8}
    save_checkpoint("models/model.pt", build_model("cnn", 2, 1, 8), meta)
    lineage = Lineage()
    load_checkpoint(lineage.input("models/model.pt"))
    assert lineage.digests()["inputs"] == {"models/model.pt": sha256("models/model.pt")}


def curate(root: Path, stage: str) -> str:
    """``curate <stage>`` run in ``root``, in this process (eleven interpreter starts saved): its
    stderr."""
    stderr, here = io.StringIO(), os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = cli_main([stage])
    finally:
        os.chdir(here)
    assert code == 0, f"curate {stage}\n{stderr.getvalue()}"
    return stderr.getvalue()


def stale_in(root: Path) -> dict[str, str]:
    """Stage -> reason, from the lines of an enforcing-off ``curate gate``."""
    lines = curate(root, "gate").splitlines()
    prefix = "gate failed: "
    return dict(line.removeprefix(prefix).split(" is stale: ", 1) for line in lines if " is stale: " in line)


@pytest.mark.slow
def test_stages_run_by_hand_leave_stale_figures_marked(tiny_copy):
    # Every stage run once on the tiny profile (the session's dvc repro, which runs each stage's
    # main() as `curate <stage>` does, in DAG order): nothing is stale.
    root = tiny_copy
    assert stale_in(root) == {}

    # An upstream change, re-run by hand as far as clean: everything downstream is stale.
    set_params(root / "params.yaml", clean={"action": "keep"})
    curate(root, "clean")
    stale = stale_in(root)
    assert set(stale) == {"rebalance", "augment", "train", "train_report", "evaluate"}
    assert stale["rebalance"] == "its input data/clean/samples.parquet changed since it ran"
    assert stale["augment"] == "upstream stage rebalance is stale"

    # ... then as far as augment: the model and its figures are the old ones.
    for stage in ("rebalance", "augment"):
        curate(root, stage)
    stale = stale_in(root)
    assert set(stale) == {"train", "train_report", "evaluate"}
    assert "data/augmented/samples.parquet changed since it ran" in stale["evaluate"]
    result = read_figures("gate", root / "reports")
    assert result["gates"]["min_accuracy"] == {"observed": "stale", "passed": False, "threshold": 0.95}
    card = (root / "reports/index.md").read_text()
    assert "## evaluate: stale" in card and "## train_report: stale" in card
    assert "| accuracy |" not in card and "| best_val_accuracy |" not in card
    set_params(root / "params.yaml", gates={"enforce": True})
    enforced = subprocess.run(["curate", "gate"], cwd=root, capture_output=True, text=True)
    assert enforced.returncode == 1 and "gate failed: train is stale: " in enforced.stderr
    set_params(root / "params.yaml", gates={"enforce": False})

    for stage in ("train", "train_report", "evaluate"):
        curate(root, stage)
    assert stale_in(root) == {}
    card = (root / "reports/index.md").read_text()
    assert ": stale" not in card and "| accuracy |" in card  # (clean's audit_stale figure is no marker)

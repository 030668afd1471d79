import json

import pandas as pd
import pytest
import yaml

from curate.compare import diff_tables
from curate.gates import GATES, failures, gate_checks
from curate.params import GatesParams
from curate.stages import gate
from tests.conftest import REPO, set_params

METRICS = {
    "ingest": {"n_train": 10},
    "clean": {"flagged_rate": 0.3, "detect_f1": None},
    "rebalance": {"group_share_ratio_after": 0.5},
    "augment": {"frechet_distance": 0.1},
    "train": {"images_per_second": 1234.5, "best_val_accuracy": 0.9},
    "evaluate": {"accuracy": 0.97, "worst_group_accuracy": 0.85, "accuracy_gap": 0.02,
                 "by_group": {"<b>x": {"accuracy": 0.85}}},
}  # fmt: skip


def test_checks_compare_in_the_right_direction():
    gates = GatesParams(max_flagged_rate=0.2, min_accuracy=0.95, min_worst_group_accuracy=0.9,
                        max_accuracy_gap=0.05, min_group_share_ratio=None,
                        max_frechet_distance=None)  # fmt: skip
    checks = {c.name.split(" ")[0]: c for c in gate_checks(gates, None, METRICS)}
    assert set(checks) == {"clean.flagged_rate", "evaluate.accuracy", "evaluate.worst_group_accuracy",
                           "evaluate.accuracy_gap"}  # fmt: skip
    assert not checks["clean.flagged_rate"].passed and checks["clean.flagged_rate"].threshold == "≤ 0.2"
    assert checks["evaluate.accuracy"].passed and checks["evaluate.accuracy_gap"].passed
    assert not checks["evaluate.worst_group_accuracy"].passed
    assert [c.name for c in gate_checks(gates, "clean", METRICS)] == [
        "clean.flagged_rate (gates.max_flagged_rate)"
    ]
    assert failures(list(checks.values())) == [
        "gate failed: clean.flagged_rate (gates.max_flagged_rate): observed 0.3, required ≤ 0.2",
        "gate failed: evaluate.worst_group_accuracy (gates.min_worst_group_accuracy): observed 0.85, "
        "required ≥ 0.9",
    ]


def test_a_metric_that_cannot_be_measured_fails_its_gate():
    (check,) = gate_checks(GatesParams(min_detect_f1=0.9, **{k: None for k in _others("min_detect_f1")}),
                           None, METRICS)  # fmt: skip
    assert not check.passed and check.observed == "not measured"


def _others(keep):
    return [name for name in GatesParams.model_fields if name not in (keep, "enforce")]


def test_each_stage_in_dvc_yaml_reads_exactly_its_gates():
    # A stage shows its gates in its report, so dvc.yaml must list those params for it (and no
    # other gate): else changing a threshold would leave its report stale.
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if name == "gate":
            continue
        listed = {key for key in stage.get("params", []) if isinstance(key, str) and key.startswith("gates.")}
        assert listed == {f"gates.{gate}" for gate, spec in GATES.items() if spec.stage == name}, name


def test_gate_checks_carry_their_param_key():
    defaults = GatesParams()
    checks = gate_checks(defaults, None, METRICS)
    assert {check.key for check in checks} == {name for name in GATES if getattr(defaults, name) is not None}


def write_metrics(root, metrics=METRICS):
    """Each stage's metrics, with a lineage that names no file: every stage is current."""
    for folder in ("metrics", "lineage"):
        (root / "reports" / folder).mkdir(parents=True, exist_ok=True)
    for stage, values in metrics.items():
        (root / "reports" / "metrics" / f"{stage}.json").write_text(json.dumps(values))
        (root / "reports" / "lineage" / f"{stage}.json").write_text('{"inputs": {}, "outputs": {}}')


def test_gate_stage_writes_card_and_enforces(workdir, capsys):
    write_metrics(workdir)
    set_params(workdir / "params.yaml", clean={"action": "keep"})
    assert gate.main([]) == 0  # enforce is off by default: report, go on
    result = json.loads((workdir / "reports/metrics/gate.json").read_text())
    assert result["passed"] is False
    assert result["gates"]["max_flagged_rate"] == {"observed": 0.3, "passed": False, "threshold": 0.2}
    card = (workdir / "reports/index.md").read_text()
    assert "| clean.action | drop | keep |" in card
    assert "images_per_second" not in card  # measured, not a property of the data
    assert "&lt;b&gt;x" in card and "<b>x" not in card
    html = (workdir / "reports/index.html").read_text()
    assert 'href="clean.html"' in html and "<script" not in html

    set_params(workdir / "params.yaml", gates={"enforce": True})
    capsys.readouterr()
    assert gate.main([]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "gate failed: clean.flagged_rate (gates.max_flagged_rate): observed 0.3, required ≤ 0.2",
        "gate failed: evaluate.worst_group_accuracy (gates.min_worst_group_accuracy): observed 0.85, "
        "required ≥ 0.9",
    ]


def test_gate_stage_needs_every_metrics_file(workdir):
    from curate.errors import CurateError

    write_metrics(workdir, {k: v for k, v in METRICS.items() if k != "train"})
    with pytest.raises(CurateError, match="reports/metrics/train.json: not found"):
        gate.main([])


def test_diff_tables_classifies_changes():
    def table(rows):
        return pd.DataFrame(rows, columns=["sample_id", "label", "label_name", "group", "split", "weight"])

    a = table([("s1", 0, "a", "g", "train", 1.0), ("s2", 0, "a", "g", "train", 1.0),
               ("s3", 1, "b", "h", "train", 1.0), ("t1", 0, "a", "g", "test", 1.0)])  # fmt: skip
    b = table([("s1", 0, "a", "g", "train", 1.0), ("s3", 0, "a", "h", "train", 2.0),
               ("s4", 1, "b", "h", "train", 1.0), ("t1", 0, "a", "g", "test", 1.0)])  # fmt: skip
    diff = diff_tables(a, b)
    assert diff.totals == {"added": 1, "removed": 1, "relabelled": 1, "reweighted": 1}
    assert diff.examples["relabelled"]["previous_label"].tolist() == ["b"]
    assert diff.counts_by_group == [["g", 2, 1, 0, 1, 0, 0], ["h", 1, 2, 1, 0, 1, 1]]

import json

import pandas as pd
import pytest
import yaml

from curate import dag
from curate.curation.gates import failures, gate_checks
from curate.errors import CurateError
from curate.params import GatesParams
from curate.people.compare import diff_tables
from curate.people.declared import declarations
from curate.report.render import split_figures
from curate.stage import Gate
from curate.stages import gate
from tests.conftest import REPO, set_params

STAGES = declarations(REPO / "dvc.yaml")
DECLARED = {name: stage.gates for name, stage in STAGES.items()}
PIPELINE = dag.reporting(REPO / "dvc.yaml")
DAG = dag.lineage_stages(REPO / "dvc.yaml")

METRICS = {
    "ingest": {"n_train": 10},
    "clean": {"flagged_rate": 0.3, "detect_f1": None},
    "rebalance": {"group_share_ratio_after": 0.5},
    "augment": {"frechet_distance": 0.1},
    "train_report": {"images_per_second": 1234.5, "best_val_accuracy": 0.9},
    "evaluate": {"accuracy": 0.97, "worst_group_accuracy": 0.85, "accuracy_gap": 0.02,
                 "accuracy_ratio": 0.875, "by_group": {"<b>x": {"accuracy": 0.85}}},
}  # fmt: skip


def test_checks_compare_in_the_right_direction():
    gates = GatesParams(max_flagged_rate=0.2, min_accuracy=0.95, min_worst_group_accuracy=0.9,
                        max_accuracy_gap=0.05, min_group_share_ratio=None,
                        max_frechet_distance=None)  # fmt: skip
    checks = {c.name.split(" ")[0]: c for c in gate_checks(gates, DECLARED, METRICS)}
    assert set(checks) == {"clean.flagged_rate", "evaluate.accuracy", "evaluate.worst_group_accuracy",
                           "evaluate.accuracy_gap"}  # fmt: skip
    assert not checks["clean.flagged_rate"].passed and checks["clean.flagged_rate"].threshold == "≤ 0.2"
    assert checks["evaluate.accuracy"].passed and checks["evaluate.accuracy_gap"].passed
    assert not checks["evaluate.worst_group_accuracy"].passed
    assert [c.name for c in gate_checks(gates, {"clean": DECLARED["clean"]}, METRICS)] == [
        "clean.flagged_rate (gates.max_flagged_rate)"
    ]
    assert failures(list(checks.values())) == [
        "gate failed: clean.flagged_rate (gates.max_flagged_rate): observed 0.3, required ≤ 0.2",
        "gate failed: evaluate.worst_group_accuracy (gates.min_worst_group_accuracy): observed 0.85, "
        "required ≥ 0.9",
    ]


def test_a_metric_that_cannot_be_measured_fails_its_gate():
    (check,) = gate_checks(GatesParams(min_detect_f1=0.9, **{k: None for k in _others("min_detect_f1")}),
                           DECLARED, METRICS)  # fmt: skip
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
        assert listed == {f"gates.{gate}" for gate in DECLARED.get(name, {})}, name


def test_dvc_yaml_keeps_details_out_of_the_metrics_and_gate_reads_them():
    # Details are plain outs in git: no dvc exp show column, and a change re-runs the gate.
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    reporting = {name: stage for name, stage in stages.items() if name not in ("folds", "train")}
    assert set(reporting) == {*PIPELINE, "gate"}
    for name, stage in reporting.items():
        details = f"reports/details/{name}.json"
        assert {details: {"cache": False}} in stage["outs"], name
        assert [{f"reports/metrics/{name}.json": {"cache": False}}] == stage["metrics"], name
    for name in ("folds", "train"):  # they train: no report, no figures, only their lineage
        assert (
            "metrics" not in stages[name]
            and {f"reports/lineage/{name}.json": {"cache": False}} in stages[name]["outs"]
        )
    assert {f"reports/details/{name}.json" for name in PIPELINE} <= set(stages["gate"]["deps"])
    assert {f"reports/lineage/{name}.json" for name in DAG} <= set(stages["gate"]["deps"])


def test_gate_checks_carry_their_param_key():
    defaults = GatesParams()
    checks = gate_checks(defaults, DECLARED, METRICS)
    declared = {key for gates in DECLARED.values() for key in gates}
    assert {check.key for check in checks} == {key for key in declared if defaults.threshold(key) is not None}


def write_metrics(root, metrics=METRICS, split=True, gates=None):
    """Each stage's figures as ``write_stage`` writes them (headline metrics + details; ``split=False``:
    all in the metrics file, as before the split), with a lineage that names no file: all current,
    and a run record of the gates each stage declares (``gates``: other declarations by stage)."""
    gates = DECLARED | (gates or {})
    for folder in ("metrics", "details", "lineage"):
        (root / "reports" / folder).mkdir(parents=True, exist_ok=True)
    for stage, values in metrics.items():
        headline, details = split_figures(STAGES[stage].metrics, values) if split else (values, None)
        (root / "reports" / "metrics" / f"{stage}.json").write_text(json.dumps(headline))
        if details is not None:
            (root / "reports" / "details" / f"{stage}.json").write_text(json.dumps(details))
    for stage in DAG:  # the training stages (folds, train) record a lineage and no figures
        run = {
            "metrics": list(STAGES[stage].metrics),
            "gates": {key: {"metric": g.metric, "bound": g.bound} for key, g in gates.get(stage, {}).items()},
        }
        lineage = {"inputs": {}, "outputs": {}, "run": run}
        (root / "reports" / "lineage" / f"{stage}.json").write_text(json.dumps(lineage))


def test_gate_stage_writes_card_and_enforces(workdir, capsys):
    write_metrics(workdir)
    set_params(workdir / "params.yaml", clean={"action": "keep"})
    assert gate.main([]) == 0  # enforce is off by default: report, go on
    # The verdict is the one DVC metric; each gate's threshold, observation and verdict are details.
    assert json.loads((workdir / "reports/metrics/gate.json").read_text()) == {"passed": False}
    result = json.loads((workdir / "reports/details/gate.json").read_text())
    assert result["gates"]["max_flagged_rate"] == {"observed": 0.3, "passed": False, "threshold": 0.2}
    card = (workdir / "reports/index.md").read_text()
    assert "| clean.action | auto | keep |" in card
    assert "images_per_second" not in card  # measured, not a property of the data
    assert "&lt;b&gt;x" in card and "<b>x" not in card
    # Headline figures first, each row saying which file it is in: the details are still on the card.
    assert "| accuracy | 0.970 | metrics |" in card
    assert card.index("| accuracy_gap | 0.020 | metrics |") < card.index(
        "| by_group.&lt;b&gt;x.accuracy | 0.850 | details |"
    )
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


def test_a_high_flagged_rate_is_said_first_with_its_numbers_and_named_in_the_failure(workdir, capsys):
    clean = {"flagged_rate": 0.5, "flagged": 50, "dropped": 30, "relabelled": 0, "held_back": 20}
    write_metrics(workdir, METRICS | {"clean": clean})
    set_params(workdir / "params.yaml", gates={"enforce": True}, clean={"cap": "absolute", "action": "drop"})
    assert gate.main([]) == 1
    note = (
        "50 train rows flagged (50.0%, over gates.max_flagged_rate 0.2): 30 removed, 0 relabelled, 20 held "
        "back by the removal cap and trained on with their given labels (clean.cap absolute, "
        "clean.max_drop_fraction 0.3, clean.action drop). A rate this high means noise throughout or fold "
        "models too weak to judge: look at the flagged samples. clean.cap and clean.max_drop_fraction "
        "decide how many go; clean.action keep removes none"
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        lines[0]
        == f"gate failed: clean.flagged_rate (gates.max_flagged_rate): observed 0.5, required ≤ 0.2: {note}"
    )
    card = (workdir / "reports/index.md").read_text()
    assert card.index(note[:60]) < card.index("## The DAG")
    assert note[:60] in (workdir / "reports/gate.md").read_text()


def test_flags_of_fold_models_that_learnt_nothing_are_named_as_such(workdir, capsys):
    # The tiny profile's 2-epoch folds: 264 of 310 rows flagged, kappa 0.02, nothing acted on.
    clean = {"flagged_rate": 0.852, "flagged": 264, "dropped": 0, "relabelled": 0, "held_back": 0}
    write_metrics(workdir, METRICS | {"clean": clean | {"fold_skill": 0.017}})
    set_params(workdir / "params.yaml", gates={"enforce": True})
    assert gate.main([]) == 1
    failure = capsys.readouterr().err.strip().splitlines()[0]
    assert failure.startswith("gate failed: clean.flagged_rate (gates.max_flagged_rate): observed 0.852")
    assert failure.endswith(
        ": 264 train rows flagged (85.2%, over gates.max_flagged_rate 0.2) and none acted on: the fold "
        "models agree with the given labels little more than chance (fold skill 0.02 < "
        "clean.min_fold_skill 0.2), so their flags are no evidence. Train them longer (folds.epochs, "
        "folds.min_steps) or look at the labels"
    )
    assert "and none acted on" in (workdir / "reports/index.md").read_text()


def test_a_gate_may_judge_a_detail(workdir):
    # evaluate.accuracy_ratio is in reports/details/evaluate.json, not in its metrics.
    write_metrics(workdir, gates={"evaluate": {"min_accuracy": Gate("accuracy_ratio", "min")}})
    assert "accuracy_ratio" not in (workdir / "reports/metrics/evaluate.json").read_text()
    gate.main([])
    result = json.loads((workdir / "reports/details/gate.json").read_text())
    assert result["gates"]["min_accuracy"] == {"observed": 0.875, "passed": False, "threshold": 0.95}


def test_gate_reads_outputs_from_before_the_split(workdir):
    # Every figure in the metrics file and no details file: the same verdicts and the same card.
    write_metrics(workdir)
    gate.main([])
    split = {p: (workdir / "reports" / p).read_text() for p in ("details/gate.json", "index.md")}
    for path in (workdir / "reports" / "details").iterdir():
        path.unlink()
    write_metrics(workdir, split=False)
    gate.main([])
    assert {p: (workdir / "reports" / p).read_text() for p in split} == split


def test_gate_stage_needs_every_metrics_file(workdir):
    write_metrics(workdir, {k: v for k, v in METRICS.items() if k != "train_report"})
    with pytest.raises(CurateError, match="reports/metrics/train_report.json: not found"):
        gate.main([])


def test_a_details_file_that_is_not_json_stops_with_one_line(workdir):
    write_metrics(workdir)
    (workdir / "reports/details/evaluate.json").write_text("{not json")
    with pytest.raises(CurateError, match=r"^reports/details/evaluate.json: not readable as JSON \(.*\); "
                                          r"re-run the evaluate stage \(dvc repro\)$"):  # fmt: skip
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

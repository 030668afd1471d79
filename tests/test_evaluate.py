import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from curate.curation import evaluation
from curate.data.samples import write_samples
from curate.errors import CurateError
from curate.learning.checkpoint import save_checkpoint
from curate.learning.networks import build_model
from curate.report.render import read_figures
from curate.stages import evaluate
from tests.conftest import set_params
from tests.test_train import make_inputs

OUTPUTS = [
    "reports/evaluate.html",
    "reports/evaluate.md",
    "reports/metrics/evaluate.json",
    "reports/details/evaluate.json",
    "reports/plots/confusion.json",
]

# A tiny confusion: 3 classes, 6 samples, 4 right.
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])
GROUPS = np.array(["a", "a", "a", "b", "b", "b"])


def test_classification_metrics_by_hand():
    result = evaluation.classification_metrics(Y_TRUE, Y_PRED, ["x", "y", "z"])
    assert result["accuracy"] == pytest.approx(4 / 6)
    # precision: x predicted twice (1 right), y three times (2 right), z once (right)
    # recall: x 1/2, y 2/2, z 1/2; F1: 0.5, 0.8, 2/3
    assert [result["per_class"][c]["precision"] for c in "xyz"] == pytest.approx([1 / 2, 2 / 3, 1])
    assert [result["per_class"][c]["recall"] for c in "xyz"] == pytest.approx([1 / 2, 1, 1 / 2])
    assert result["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert result["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_expected_calibration_error_by_hand():
    # Confidence 0.9 twice (one right), 0.6 twice (both right):
    # 2/4 x |0.5 - 0.9| + 2/4 x |1.0 - 0.6| = 0.2 + 0.2.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    assert evaluation.expected_calibration_error(y, probs, 15) == pytest.approx(0.4)
    bins = [row for row in evaluation.calibration_bins(y, probs, 15) if row["count"]]
    assert [(row["count"], row["accuracy"]) for row in bins] == [(2, 1.0), (2, 0.5)]
    perfect = np.eye(3)[[0, 1, 2]]
    assert evaluation.expected_calibration_error(np.array([0, 1, 2]), perfect) == 0.0


def test_group_metrics_by_hand():
    result = evaluation.group_metrics(Y_TRUE, Y_PRED, GROUPS)
    # a: rows 0,1,2 -> right, wrong, right = 2/3; b: rows 3,4,5 -> right, right, wrong = 2/3
    # macro recall over the classes each group has: a: x 1/2, y 1 -> 3/4; b: y 1, z 1/2 -> 3/4
    assert result["by_group"] == {
        "a": {"accuracy": pytest.approx(2 / 3), "macro_recall": pytest.approx(0.75), "n": 3},
        "b": {"accuracy": pytest.approx(2 / 3), "macro_recall": pytest.approx(0.75), "n": 3},
    }
    skewed = evaluation.group_metrics(Y_TRUE, np.array([0, 0, 1, 1, 2, 0]), GROUPS)
    assert skewed["worst_group_accuracy"] == pytest.approx(2 / 3)
    assert skewed["accuracy_gap"] == pytest.approx(1 / 3)
    assert skewed["accuracy_ratio"] == pytest.approx(2 / 3)


def test_one_vs_rest_fairness_by_hand():
    result = evaluation.one_vs_rest_fairness(Y_TRUE, Y_PRED, GROUPS, ["x", "y", "z"])
    x = result["per_class"]["x"]
    # Rate of predicting x: a 1/3 (row 0), b 1/3 (row 5): parity. Equalized odds for x:
    # TPR a 1/2 (rows 0,1 are x), b has no x (undefined); fairlearn takes the larger gap of TPR and FPR.
    assert x["dp_diff_ovr"] == pytest.approx(0.0)
    y = result["per_class"]["y"]
    # Predicting y: a 2/3 (rows 1, 2), b 1/3 (row 3) -> 1/3.
    assert y["dp_diff_ovr"] == pytest.approx(1 / 3)
    # y: TPR a 1 (row 2), b 1 (row 3); FPR a 1/2 (row 1 of two non-y), b 0 -> 1/2.
    assert y["eo_diff_ovr"] == pytest.approx(0.5)
    assert result["dp_diff_ovr_max"] == pytest.approx(
        max(v["dp_diff_ovr"] for v in result["per_class"].values())
    )


def test_confidently_wrong_orders_by_confidence():
    probs = np.array([[0.6, 0.4], [0.1, 0.9], [0.2, 0.8], [0.95, 0.05]])
    y = np.array([1, 0, 1, 1])  # wrong: row 0 (0.6), row 1 (0.9), row 3 (0.95)
    assert evaluation.confidently_wrong(y, probs, 2).tolist() == [3, 1]


def make_model(workdir, names=("c0", "c1", "c2"), size=16):
    torch.manual_seed(0)
    net = build_model("cnn", len(names), 1, size)
    meta = {"name": "cnn", "n_classes": len(names), "channels": 1, "size": size, "class_names": list(names)}
    save_checkpoint(workdir / "models/model.pt", net, meta)


def test_evaluate_stage_outputs_are_complete_and_deterministic(workdir):
    samples = make_inputs(workdir)
    make_model(workdir)  # untrained, so there are wrong answers to show
    assert evaluate.main([]) == 0
    first = {path: (workdir / path).read_bytes() for path in OUTPUTS}
    metrics = read_figures("evaluate", workdir / "reports")
    for key in (*evaluate.HEADLINE_ROWS, "per_class", "by_group", "confusion_matrix"):
        assert key in metrics, key
    assert set(metrics["by_group"]) == {"big"}  # the test rows are all of group big
    assert set(metrics["per_class"]["c0"]) == {"precision", "recall", "support", "dp_diff_ovr", "eo_diff_ovr"}
    records = json.loads(first["reports/plots/confusion.json"])
    assert len(records) == (samples["split"] == "test").sum()
    assert sum(map(sum, metrics["confusion_matrix"])) == len(records)
    assert {"actual", "predicted"} == set(records[0])
    html = first["reports/evaluate.html"].decode()
    assert "one-vs-rest" in html and "<script" not in html and "data:image/png;base64," in html
    assert evaluate.main([]) == 0
    for path in OUTPUTS:
        assert (workdir / path).read_bytes() == first[path], path


def test_a_model_for_other_classes_is_refused(workdir):
    make_inputs(workdir)
    make_model(workdir, names=("a", "b", "c"))
    with pytest.raises(CurateError, match=r"model\.pt: trained for classes"):
        evaluate.main([])
    assert not (workdir / "reports/metrics/evaluate.json").exists()


def test_no_test_rows_is_refused(workdir):
    samples = make_inputs(workdir)
    write_samples(workdir / "data/augmented/samples.parquet", samples[samples["split"] == "train"])
    make_model(workdir)
    with pytest.raises(CurateError, match="no rows with split 'test'"):
        evaluate.main([])


def test_verdict_shows_the_evaluate_gates(workdir):
    make_inputs(workdir)
    make_model(workdir)  # untrained: about chance accuracy
    set_params(workdir / "params.yaml", gates={"min_accuracy": 0.99, "enforce": True})
    assert evaluate.main([]) == 0  # the report shows the gate; the gate stage enforces it
    text = (workdir / "reports/evaluate.md").read_text()
    assert "**Verdict: FAIL**" in text
    assert "| evaluate.accuracy (gates.min_accuracy) |" in text and "≥ 0.99" in text
    assert "gates.max_flagged_rate" not in text  # another stage's gate


def test_stage_module_does_not_import_torch():
    code = "import sys, curate.stages.evaluate; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False"]


def test_asking_for_an_absent_device_fails_clearly(workdir):
    make_inputs(workdir)
    make_model(workdir)
    if torch.cuda.is_available():
        pytest.skip("this machine has cuda")
    set_params(workdir / "params.yaml", evaluate={"device": "cuda"})
    with pytest.raises(
        CurateError, match=r"params.yaml: evaluate.device = 'cuda', but this machine has no cuda"
    ):
        evaluate.main([])
    assert not (workdir / "reports/metrics/evaluate.json").exists()

"""``curate trace``: one sample's story, from hand-made tables (fast) and on the tiny profile (slow)."""

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curate import cli
from curate.curation.clean_actions import action_reasons, choose_action
from curate.curation.label_issues import decide_actions, relabel_floors
from curate.data.atomic import write_array
from curate.data.image_rows import write_images
from curate.data.samples import read_samples, write_samples
from curate.params import load_params
from tests.conftest import ENV, set_params
from tests.test_report import assert_safe_html

NASTY = "<b>x</b>"  # class 0; "cat" is class 1
CAFE = unicodedata.normalize("NFD", "café/t.png")  # as macOS writes it
RECIPE = '[{"args":{"scale":[0.7,1.0],"size":8},"name":"RandomResizedCrop"}]'
RAW = [
    ("d00d", "cat/0.png", 1, "g1", "train"),
    ("d00d-1", "cat/1.png", 1, "g1", "train"),  # identical bytes to cat/0.png
    ("e1", "x/0.png", 0, "g1", "train"),
    ("e2", "x/1.png", 0, "g2", "train"),
    ("t1", CAFE, 1, "g1", "test"),
    ("t2", "x/t.png", 0, "g2", "test"),
]
CLEAN = {  # train row -> action, flagged, predicted label, pred_probs row
    "d00d": ("none", False, 1, [0.2, 0.8]),
    "d00d-1": ("drop", True, 0, [0.9, 0.1]),
    "e1": ("relabel", True, 1, [0.05, 0.95]),
    "e2": ("keep", True, 1, [0.3, 0.7]),
}
WEIGHTS = {"d00d": 0.5, "e1": 0.5, "e2": 2.0}


def raw_table() -> pd.DataFrame:
    raw = pd.DataFrame(RAW, columns=["sample_id", "path", "label", "group", "split"])
    raw.insert(2, "row", np.arange(len(raw)))
    raw.insert(4, "label_name", [[NASTY, "cat"][label] for label in raw["label"]])
    return raw


def clean_table(raw: pd.DataFrame) -> pd.DataFrame:
    clean = raw.copy()
    train = clean["split"] == "train"
    clean["given_label"] = clean["label"]
    clean["action"] = [CLEAN[i][0] if i in CLEAN else "none" for i in clean["sample_id"]]
    clean["auto_action"] = clean["action"]
    clean["is_label_issue"] = [CLEAN[i][1] if i in CLEAN else False for i in clean["sample_id"]]
    clean["predicted_label"] = [CLEAN[i][2] if i in CLEAN else -1 for i in clean["sample_id"]]
    probs = np.array([CLEAN[i][3] for i in clean.loc[train, "sample_id"]])
    clean["pred_row"] = -1
    clean.loc[train, "pred_row"] = np.arange(train.sum())
    clean["fold"] = np.where(train, clean["pred_row"] % 2, -1)
    clean["predicted_confidence"] = np.nan
    clean.loc[train, "predicted_confidence"] = probs.max(axis=1)
    clean["label_quality"] = np.nan
    clean.loc[train, "label_quality"] = probs[np.arange(len(probs)), clean.loc[train, "label"]]
    clean["is_near_duplicate"], clean["duplicate_set"] = False, -1
    clean["is_outlier"], clean["outlier_score"] = False, 0.5
    relabel = clean["action"] == "relabel"
    clean.loc[relabel, "label"] = clean.loc[relabel, "predicted_label"]
    clean.loc[relabel, "label_name"] = "cat"
    write_array("data/folds/pred_probs.npy", probs)
    return with_reasons(clean)


def with_reasons(clean: pd.DataFrame) -> pd.DataFrame:
    """The ``action_reason`` column as the clean stage writes it, under the workdir's params."""
    train = clean["split"] == "train"
    clean["action_reason"] = "test sample: the test split is never cleaned"
    settings = load_params().clean
    probs, given = np.load("data/folds/pred_probs.npy"), clean.loc[train, "given_label"].to_numpy()
    rows = clean[train].assign(relabel_floor=relabel_floors(probs, given, settings.relabel_min_confidence))
    choice = choose_action(settings, skill=1.0, flagged_rate=0.75)
    # What the cap records as it holds rows back: the real decision on the given labels.
    decision = decide_actions(
        rows.assign(label=given, drop_candidate=False),
        action=choice.action,
        relabel_floor=rows["relabel_floor"].to_numpy(),
        max_drop_fraction=settings.max_drop_fraction,
        cap=settings.cap,
        min_rows=settings.min_examples_per_class,
    )
    reasons = action_reasons(rows, settings, [NASTY, "cat"], choice, decision.holds)
    clean.loc[train, "action_reason"] = reasons
    return clean


def augmented_table(balanced: pd.DataFrame) -> pd.DataFrame:
    passed = balanced.assign(store="raw", parent_id=pd.NA, recipe=pd.NA)
    passed.loc[passed["sample_id"] == "e2", "weight"] = 1.0  # shared with its one copy
    child = passed[passed["sample_id"] == "e2"].assign(
        sample_id="e2~a1", store="augmented", row=0, parent_id="e2", recipe=RECIPE
    )
    return pd.concat([passed, child], ignore_index=True)


@pytest.fixture
def made(workdir):
    """Every table trace reads, written by hand: a kept, a dropped, a relabelled, a capped
    (and augmented) train sample, and two test samples (one predicted right, one wrong)."""
    # The capped sample's reason names the cap; a relabel floor of 0.9 makes the drop's reason plain.
    set_params(
        workdir / "params.yaml", clean={"cap": "relative", "action": "drop", "relabel_min_confidence": 0.9}
    )
    raw = raw_table()
    write_samples("data/raw/samples.parquet", raw)
    write_images("data/raw/images", np.arange(6 * 64, dtype=np.uint8).reshape(6, 8, 8, 1))
    clean = clean_table(raw)
    write_samples("data/clean/samples.parquet", clean)
    balanced = clean[clean["action"] != "drop"].assign(copies=1)
    balanced["weight"] = [WEIGHTS.get(i, 1.0) for i in balanced["sample_id"]]
    write_samples("data/balanced/samples.parquet", balanced)
    write_samples("data/augmented/samples.parquet", augmented_table(balanced))
    write_images("data/augmented/images", np.full((1, 8, 8, 1), 200, dtype=np.uint8))
    os.makedirs("reports/plots")
    # One record per test row of data/augmented, in its order: t1 (cat), then t2 (NASTY).
    records = [{"actual": "cat", "predicted": "cat"}, {"actual": NASTY, "predicted": "cat"}]
    with open("reports/plots/confusion.json", "w") as handle:
        json.dump(records, handle)
    return workdir


def trace(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["trace", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_dropped_sample(made, capsys):
    code, out, _ = trace(capsys, "cat/1.png")
    assert code == 0
    assert out.startswith("# curate trace: cat/1.png (d00d-1, workspace)\n")
    assert "**dropped by clean: flagged by cleanlab**" in out
    assert "- identical bytes: cat/0.png (d00d)" in out
    assert "- out-of-fold probability of the given label cat: 0.100 (fold 1)" in out
    assert "- predicted &lt;b&gt;x&lt;/b&gt; with probability 0.900" in out
    assert "- not in data/balanced/samples.parquet: dropped by clean" in out
    assert "- not in data/augmented/samples.parquet: dropped by clean" in out
    assert "- not evaluated: dropped by clean" in out


def test_sample_ids_match_exactly_not_by_prefix(made, capsys):
    assert "# curate trace: cat/0.png (d00d, workspace)" in trace(capsys, "d00d")[1]
    assert "# curate trace: cat/1.png (d00d-1, workspace)" in trace(capsys, "d00d-1")[1]


def test_relabelled_and_reweighted_samples(made, capsys):
    out = trace(capsys, "x/0.png")[1]
    assert (
        "- action relabel: relabelled to cat: the fold models give it 0.950, at least "
        "clean.relabel_min_confidence 0.9" in out
    )
    assert "- weight 0.500, copies 1 (rebalance.strategy group; weights have mean 1)" in out
    assert "- no augmented copies; trains with weight 0.500" in out
    assert "- not evaluated: a train sample (evaluate scores the test split)" in out


def test_capped_sample_and_its_augmented_copy(made, capsys):
    out = trace(capsys, "x/1.png")[1]
    assert (
        # Class x (2 rows) may lose 1 under the relative cap, and lost e1 to its relabel to cat;
        # group g2 (1 row) may lose none: 1 row stays.
        "held back from dropping it by the removal cap: class &lt;b&gt;x&lt;/b&gt;&#39;s budget, 1 of its 2 "
        "train rows, clean.min_examples_per_class 1 to stay, is spent; group g2&#39;s budget, 0 of its 1 "
        "train row, clean.min_examples_per_class 1 to stay, is spent (clean.cap relative: a class or "
        "group may lose floor(105.0% x its rows), 75.0% of the train rows asked to be dropped + "
        "clean.max_drop_fraction 0.3)"
    ) in out
    assert "- weight 2.000, copies 1" in out
    assert "- 1 augmented copy (e2~a1); its weight is shared with them: 1.000 each" in out
    assert "- recipe: RandomResizedCrop(scale=(0.7, 1.0), size=8)" in out
    # An augmented copy's id leads to its original.
    out = trace(capsys, "e2~a1")[1]
    assert out.startswith("# curate trace: x/1.png (e2, workspace)\n\ne2~a1 is an augmented copy")


def test_test_samples_right_and_wrong(made, capsys):
    out = trace(capsys, unicodedata.normalize("NFC", "café/t.png"))[1]  # typed, NFC
    assert "**test sample: predicted cat, actual cat: right**" in out
    assert "- test sample: the test split is never cleaned" in out
    out = trace(capsys, "data/demo/x/t.png")[1]  # under ingest.source
    assert "- predicted cat, actual &lt;b&gt;x&lt;/b&gt;: wrong" in out


def test_a_revision_from_before_data_folds_has_its_predictions_beside_clean_s_table(made, capsys):
    os.replace("data/folds/pred_probs.npy", "data/clean/pred_probs.npy")
    assert "- out-of-fold probability of the given label cat: 0.100 (fold 1)" in trace(capsys, "cat/1.png")[1]
    os.remove("data/clean/pred_probs.npy")
    missing = "- out-of-fold probability of the given label: data/folds/pred_probs.npy is not in workspace"
    assert missing in trace(capsys, "cat/1.png")[1]


def test_unknown_sample_is_one_line(made, capsys):
    code, out, err = trace(capsys, "nope.png")
    assert (code, out) == (2, "")
    assert err == (
        "curate: error: nope.png: no sample has this path or sample_id in data/raw/samples.parquet "
        "(workspace)\n"
    )


def test_close_path_is_suggested(made, capsys):
    code, _, err = trace(capsys, "cat/0.jpg")
    assert code == 2
    assert err.endswith("(workspace); did you mean cat/0.png?\n") and err.count("\n") == 1


def test_missing_downstream_tables_are_named(made, capsys):
    os.remove("data/balanced/samples.parquet")
    os.remove("reports/plots/confusion.json")
    code, out, _ = trace(capsys, "x/t.png")
    assert code == 0
    assert "- data/balanced/samples.parquet is not in workspace (not reproduced" in out
    assert "- reports/plots/confusion.json is not in workspace (dvc repro, or dvc pull)" in out


def test_unreadable_or_stale_inputs_are_one_line(made, capsys):
    Path("reports/plots/confusion.json").write_text("[{")
    code, out, err = trace(capsys, "x/t.png")
    assert (code, out) == (2, "")
    assert err.startswith("curate: error: reports/plots/confusion.json (workspace): unreadable (")
    assert err.count("\n") == 1
    clean = pd.read_parquet("data/clean/samples.parquet").drop(columns="pred_row")
    write_samples("data/clean/samples.parquet", clean)
    assert trace(capsys, "x/t.png")[2] == (
        "curate: error: data/clean/samples.parquet (workspace): missing column pred_row (stale: dvc repro)\n"
    )


def test_html_escapes_class_names_and_shows_thumbnails(made, capsys):
    code, out, _ = trace(capsys, "x/1.png", "--html", "trace.html")
    html = (made / "trace.html").read_text()
    assert code == 0 and "<b>" not in out
    assert_safe_html(html)
    assert NASTY not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert html.count('src="data:image/png;base64,') == 2  # the sample and its copy
    assert "Its augmented copies (first 1 of 1)" in html


def test_trace_starts_without_torch():
    heavy = "{'torch', 'torchvision', 'cleanlab'}"
    code = f"import sys, curate.cli, curate.people.trace; print(sorted({heavy} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "[]\n"


@pytest.fixture
def tiny(tiny_copy):
    """The template on the tiny profile, reproduced and committed (so --rev HEAD has its data; TINY
    rebalances its 7-row sklearn group too): this test's own copy of the session's run."""
    return tiny_copy


def curate_trace(root, *args) -> str:
    result = subprocess.run(["curate", "trace", *args], cwd=root, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_dropped_sample_on_tiny(tiny):
    clean = pd.read_parquet(tiny / "data/clean/samples.parquet")
    dropped = clean[(clean["action"] == "drop") & clean["is_label_issue"]].iloc[0]
    out = curate_trace(tiny, dropped["path"])
    assert f"- label quality {dropped['label_quality']:.3f} (cleanlab, low is suspicious); flagged" in out
    assert "- action drop: flagged by cleanlab" in out
    assert "- not in data/balanced/samples.parquet: dropped by clean" in out
    assert "- not evaluated: dropped by clean" in out
    # The clean report's thumbnail of its most suspicious sample names the command.
    first = clean[clean["is_label_issue"]].sort_values("label_quality", kind="stable").iloc[0]
    assert f"curate trace {first['sample_id']}" in (tiny / "reports/clean.html").read_text()


@pytest.mark.slow
def test_reweighted_sample_on_tiny(tiny):
    balanced = pd.read_parquet(tiny / "data/balanced/samples.parquet")
    train = balanced[balanced["split"] == "train"]
    row = train[(train["weight"] - 1).abs() > 1e-3].iloc[0]
    out = curate_trace(tiny, row["sample_id"])
    assert f"- weight {row['weight']:.3f}, copies {row['copies']} (rebalance.strategy group" in out
    augmented = pd.read_parquet(tiny / "data/augmented/samples.parquet")
    n_copies = int((augmented["parent_id"] == row["sample_id"]).sum())
    assert (f"- {n_copies} augmented cop" if n_copies else "- no augmented copies") in out
    # The same story read from the commit through DVC, with thumbnails.
    at_head = curate_trace(tiny, row["sample_id"], "--rev", "HEAD", "--html", "trace.html")
    assert at_head == out.replace(", workspace)\n", ", HEAD)\n", 1)
    assert_safe_html(html := (tiny / "trace.html").read_text())
    assert html.count('src="data:image/png;base64,') == 1 + min(n_copies, 8)


@pytest.mark.slow
def test_test_sample_on_tiny(tiny):
    augmented = pd.read_parquet(tiny / "data/augmented/samples.parquet")
    records = json.loads((tiny / "reports/plots/confusion.json").read_text())
    test = augmented[augmented["split"] == "test"]
    wrong = [i for i, record in enumerate(records) if record["actual"] != record["predicted"]]
    for index in (0, *wrong[:1]):
        record = records[index]
        verdict = "right" if record["actual"] == record["predicted"] else "wrong"
        out = curate_trace(tiny, test["path"].iloc[index])
        assert (
            f"**test sample: predicted {record['predicted']}, actual {record['actual']}: {verdict}**" in out
        )


def test_a_reviewers_decision_is_named_as_such(made, capsys):
    clean = read_samples("data/clean/samples.parquet")
    row = clean.index[clean["path"] == "x/0.png"][0]
    clean["action_source"] = "auto"
    clean["auto_action"] = clean["action"]
    clean.loc[row, ["action", "action_source", "auto_action"]] = ["keep", "review", "relabel"]
    write_samples("data/clean/samples.parquet", with_reasons(clean))
    out = trace(capsys, "x/0.png")[1]
    assert "decided by a reviewer (keep, clean.decisions); the automatic action was relabel" in out


def test_trace_prints_the_reason_clean_recorded(made, capsys):
    clean = read_samples("data/clean/samples.parquet")
    clean.loc[clean["path"] == "cat/1.png", "action_reason"] = "recorded by clean, not re-derived"
    write_samples("data/clean/samples.parquet", clean)
    assert "- action drop: recorded by clean, not re-derived" in trace(capsys, "cat/1.png")[1]
    write_samples("data/clean/samples.parquet", clean.drop(columns="action_reason"))
    older = trace(capsys, "cat/1.png")[1]
    assert "- action drop: not recorded (a clean stage from before action_reason: dvc repro)" in older

"""The review ledger: people's decisions override cleanlab's, checked like params, measured.

The fast tests run the pure ``clean()`` on the hand-made table of ``tests/test_clean.py``
(train rows 3, 8 of class a, 24, 29 of b, 45, 50 of c are flipped and flagged; rows 60-65 are
test rows); the slow one edits the ledger of a tiny template copy and runs ``dvc repro``.
"""

import math
import subprocess
import sys
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from curate.curation.gates import gate_checks
from curate.data import ledger
from curate.errors import CurateError
from curate.params import CleanParams, GatesParams, Params
from curate.report.writer import write_stage
from curate.stages import clean
from tests.test_clean import NAMES, _checks, _table, clean_rows

LEDGER = "data/review/decisions.csv"
HEADER = ",".join(ledger.COLUMNS)
ONE = "(one decision per sample: append an undo line to change it)"

CLEAN_GATES = {"clean": clean.STAGE.gates}


@pytest.fixture
def ledger_dir(tmp_path, monkeypatch):
    """Run in a temp folder, so the ledger is ``data/review/decisions.csv`` as in a project."""
    (tmp_path / "data" / "review").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(text: str) -> pd.DataFrame:
    with open(LEDGER, "w", encoding="utf-8", newline="") as handle:
        handle.write(f"{HEADER}\n{text}")
    return ledger.read_ledger(Path(LEDGER))


def _clean(text: str | None, samples: pd.DataFrame | None = None, **settings) -> clean.Cleaned:
    samples = _table() if samples is None else samples
    train = samples[samples["split"] == "train"]
    decisions = None if text is None else _write(text)
    return clean_rows(samples, _checks(len(train)), CleanParams(**settings), decisions)


def test_no_ledger_means_no_decisions(ledger_dir):
    assert ledger.read_ledger(Path(LEDGER)).empty
    result = _clean(None)
    train, test = result.train, result.samples[result.samples["split"] == "test"]
    assert (train["action_source"] == "auto").all() and (train["auto_action"] == train["action"]).all()
    assert (test[["action", "auto_action", "action_source"]] == "none").all().all()
    figures = clean.metrics(result)
    assert (figures["reviewed"], figures["orphaned"]) == (0, 0) and math.isnan(figures["review_precision"])


def test_people_override_automatic_drop_and_keep_and_relabel(ledger_dir):
    result = _clean(
        "s003,,keep,,ann,the 4 is a 1 written oddly\n"  # flagged, automatically dropped
        "s010,,drop,,ann,blurred\n"  # unflagged, automatically kept
        ",img/24,relabel,c,bo,\n"  # flagged (b -> c), by path
        "s045,img/45,relabel,b,bo,\n"  # flagged (c -> a predicted), a person says b
    )
    train = result.train
    assert train.loc[[3, 10, 24, 45], "action"].tolist() == ["keep", "drop", "relabel", "relabel"]
    assert train.loc[[3, 10, 24, 45], "auto_action"].tolist() == ["drop", "none", "drop", "drop"]
    assert (train.loc[[3, 10, 24, 45], "action_source"] == "review").all()
    assert (train.drop(index=[3, 10, 24, 45])["action_source"] == "auto").all()
    assert train.loc[[3, 24, 45], "label"].tolist() == [0, 2, 1]
    assert train.loc[[3, 24, 45], "label_name"].tolist() == ["a", "c", "b"]
    assert train.loc[[3, 24, 45], "given_label"].tolist() == [0, 1, 2]
    figures = clean.metrics(result)
    # Auto drops 6 flips; people keep 3 and relabel 24, 45 instead, and drop the unflagged 10.
    assert (figures["dropped"], figures["relabelled"]) == (4, 2)
    # Reviewed flags 3, 24, 45: 24 and 45 confirmed, 3 overturned; unflagged 10 dropped: overturned.
    assert (figures["reviewed"], figures["reviewed_flags"]) == (4, 3)
    assert (figures["confirmed"], figures["overturned"], figures["relabels_by_people"]) == (2, 2, 2)
    assert figures["review_precision"] == pytest.approx(2 / 3)


def test_keep_undoes_an_automatic_relabel(ledger_dir):
    result = _clean(
        "s003,,keep,,,\ns024,,relabel,b,,\n",
        action="relabel",
        relabel_min_confidence=0.9,
        max_drop_fraction=0.3,
    )
    train = result.train
    assert train.loc[[3, 24], "auto_action"].tolist() == ["relabel", "relabel"]
    assert train.loc[[3, 24], "action"].tolist() == ["keep", "relabel"]
    assert train.loc[[3, 24], "label"].tolist() == [0, 1] and train.loc[3, "label_name"] == "a"
    # A relabel to the given class says the label was right: it overturns the flag.
    assert clean.metrics(result)["review_precision"] == 0.0
    assert clean.metrics(result)["relabelled"] == 2  # 24 by a person (to its own class), 45 by cleanlab


def test_unflagged_keep_confirms_and_nothing_flagged_reviewed_is_not_measured(ledger_dir):
    figures = clean.metrics(_clean("s000,,keep,,,\n"))
    assert (figures["confirmed"], figures["overturned"], figures["reviewed_flags"]) == (1, 0, 0)
    assert math.isnan(figures["review_precision"])
    # A null gate does not judge it; a set gate cannot pass on nothing measured.
    assert gate_checks(GatesParams(), CLEAN_GATES, {"clean": figures}) == gate_checks(
        GatesParams(min_review_precision=None), CLEAN_GATES, {"clean": figures}
    )
    (check,) = [
        c
        for c in gate_checks(GatesParams(min_review_precision=0.5), CLEAN_GATES, {"clean": figures})
        if c.key == "min_review_precision"
    ]
    assert not check.passed and check.observed == "not measured"


def test_orphans_are_listed_not_applied_and_paths_match_after_nfc(ledger_dir):
    samples = _table()
    samples.loc[5, "path"] = unicodedata.normalize("NFC", "img/café5.png")
    nfd = unicodedata.normalize("NFD", "img/café5.png")
    result = _clean(f"deadbeefdeadbeef,,keep,,ann,\n,gone/1.png,drop,,ann,\n,{nfd},drop,,ann,\n", samples)
    assert result.orphans.values.tolist() == [
        [2, "deadbeefdeadbeef", "", "keep", "", "ann"],
        [3, "", "gone/1.png", "drop", "", "ann"],
    ]
    assert result.train.loc[5, "action"] == "drop" and result.train.loc[5, "action_source"] == "review"
    figures = clean.metrics(result)
    assert (figures["orphaned"], figures["reviewed"]) == (2, 1)
    context = clean.report_context(Params(), result)
    assert context["review_rows"] == [["none", 0, 1, 0]]
    write_stage(clean.STAGE, Params(), figures, context, None)
    digest = (ledger_dir / "reports/clean.md").read_text()
    assert "## People's decisions" in digest and "gone/1.png" in digest and "deadbeefdeadbeef" in digest
    assert "<h3>People's decisions</h3>" in (ledger_dir / "reports/clean.html").read_text()


def test_an_undo_line_takes_back_a_decision_and_the_sample_may_be_decided_again(ledger_dir):
    result = _clean("s003,,keep,,ann,\ns010,,drop,,ann,\ns003,,undo,,bo,\ns003,,relabel,b,bo,\n")
    train = result.train
    assert train.loc[[3, 10], "action"].tolist() == ["relabel", "drop"]
    assert train.loc[3, "label_name"] == "b"
    standing = ledger.standing(ledger.read_ledger(Path(LEDGER)), NAMES, LEDGER)
    assert standing.index.tolist() == [3, 5]  # s010's drop, then s003's relabel; the undone keep is gone
    assert standing["decision"].tolist() == ["drop", "relabel"]


def test_formula_cells_round_trip_neutralised(ledger_dir):
    from curate.data import csvfile

    rows = [["s003", "=HYPERLINK(1)", "keep", "", "@ann", "-1 is odd"], ["s010", "+x", "drop", "", "", "\tx"]]
    text = csvfile.csv_text(ledger.COLUMNS, rows)
    assert text.splitlines()[1:] == ["s003,'=HYPERLINK(1),keep,,'@ann,'-1 is odd", "s010,'+x,drop,,,'\tx"]
    Path(LEDGER).write_text(text)
    table = ledger.read_ledger(Path(LEDGER))
    # A row without the audit cell (a ledger from before audits) reads it as empty.
    assert table.loc[2].tolist() == [*rows[0], ""] and table.loc[3].tolist() == [*rows[1][:5], "x", ""]
    assert csvfile.restore("'plain") == "'plain" and csvfile.neutralise("a=b") == "a=b"


def test_a_spreadsheets_byte_order_mark_is_no_column_name(ledger_dir):
    Path(LEDGER).write_bytes(f"\ufeff{HEADER}\ns003,,keep,,ann,\n".encode())
    assert ledger.read_ledger(Path(LEDGER)).loc[2].tolist() == ["s003", "", "keep", "", "ann", "", ""]


BAD = [
    (
        "s003,,dorp,,,\n",
        "line 2: decision 'dorp' is not one of keep, drop, relabel, undo (did you mean 'drop'?)",
    ),
    ("s003,,relabel,,,\n", "line 2: decision relabel without a label (one of the classes: a, b, c)"),
    ("s003,,relabel,bb,,\n", "line 2: label 'bb' is not a class (did you mean 'b'?)"),
    ("s003,,relabel,zebra,,\n", "line 2: label 'zebra' is not a class (classes: a, b, c)"),
    ("s003,,keep,b,,\n", "line 2: label 'b' given with decision keep (only relabel takes one)"),
    (
        "s003,,keep,,,\n\n,img/3,drop,,,\n",
        f"line 4: path 'img/3' already decided on line 2 {ONE}",
    ),
    ("gone,,keep,,,\ngone,,drop,,,\n", f"line 3: sample gone already decided on line 2 {ONE}"),
    ("s003,,undo,,,\n", "line 2: undo of sample s003, which has no decision standing"),
    ("s003,,keep,,,\ns3,,undo,b,,\n", "line 3: label 'b' given with decision undo (only relabel takes one)"),
    (",,keep,,ann,\n", "line 2: neither sample_id nor path given (one of them names the sample)"),
    (
        "s061,,relabel,b,,\n",
        "line 2: sample s061 is a test sample; clean never changes the test split "
        "(reviewing test labels is out of scope for clean): remove the line",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(": ")[1][:24] for _, m in BAD])
def test_each_bad_line_is_named(ledger_dir, text, message):
    with pytest.raises(CurateError) as caught:
        _clean(text)
    assert str(caught.value) == f"{LEDGER} {message}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sample_id,path,decision\ns003,,keep\n",
         f"missing column(s) label, reviewer, note (the header line is {HEADER})"),
        ("sample_id,path,decison,label,reviewer,note\n",
         "unknown column 'decison' (did you mean 'decision'?)"),
        (f"{HEADER},path\n", "column 'path' appears twice"),
        (f"{HEADER}\ns003,,keep,,,,,extra\n", "not a readable CSV (Error tokenizing data. C error: "
         "Expected 7 fields in line 2, saw 8)"),
        ("", f"empty file (expected the header line {HEADER})"),
    ],
)  # fmt: skip
def test_a_malformed_file_is_named(ledger_dir, content, message):
    (ledger_dir / LEDGER).write_text(content)
    with pytest.raises(CurateError) as caught:
        ledger.read_ledger(Path(LEDGER))
    assert str(caught.value) == f"{LEDGER}: {message}"


def test_binary_file_is_not_a_csv(ledger_dir):
    (ledger_dir / LEDGER).write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00")
    with pytest.raises(CurateError, match=rf"^{LEDGER}: not a readable CSV \("):
        ledger.read_ledger(Path(LEDGER))


@pytest.mark.slow
def test_a_second_decision_on_a_sample_is_refused_and_changes_nothing(tiny_copy):
    # What a decision changes downstream (relabel -> rebalance, augment; no folds refit) is in
    # tests/test_data_review.py, whose review cycle runs dvc repro on people's decisions.
    root = tiny_copy
    cleaned = pd.read_parquet(root / "data/clean/samples.parquet")
    sample = cleaned[(cleaned["split"] == "train") & (cleaned["action"] == "none")].iloc[0]
    target = str((int(sample["label"]) + 1) % 10)
    ledger_file = root / LEDGER
    before = {path: (root / path).read_bytes() for path in ("data/clean/samples.parquet", "reports/clean.md")}

    ledger_file.write_text(
        f"{HEADER}\n{sample['sample_id']},,relabel,{target},ann,\n{sample['sample_id']},,drop,,,\n"
    )
    failed = subprocess.run(
        [sys.executable, "-m", "curate.stages.clean"], cwd=root, capture_output=True, text=True
    )
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr == (
        f"curate: error: {LEDGER} line 3: sample {sample['sample_id']} already decided on line 2 "
        "(one decision per sample: append an undo line to change it)\n"
    )
    assert {path: (root / path).read_bytes() for path in before} == before

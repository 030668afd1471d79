"""``curate exps``: the experiments table in a terminal, a pull-request comment, CSV and a page.

Built on ``tests/data/exp_show_tiny.json``, ``dvc exp show --json`` recorded on the tiny profile
(the baseline, experiments ``keep`` and ``unbalanced``, ``broken`` failed, ``waiting`` queued), and
on copies of its ``unbalanced`` experiment for 5 and 30 experiments. The real run is in
tests/test_experiments.py.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from pathlib import Path

import pytest

from curate.cli import main as curate
from curate.people.declared import declarations
from curate.people.experiments import runs, short_names
from curate.people.exps_table import build_table, metric_columns
from tests.browser import browser_test, shoot

RECORDED = Path(__file__).parent / "data" / "exp_show_tiny.json"
NASTY = "<img src=x onerror=alert(1)>|x"


def recorded() -> list:
    return json.loads(RECORDED.read_text())


def with_experiments(count: int) -> list:
    """The recorded baseline with ``count`` finished experiments, each setting its own seed and
    noise and scoring a little differently (copies of the recorded ``unbalanced``)."""
    show = recorded()
    baseline = show[1]
    model = next(group for group in baseline["experiments"] if group["name"] == "unbalanced")
    groups = []
    for index in range(count):
        group = copy.deepcopy(model)
        revision = group["revs"][0]
        group["name"] = revision["name"] = f"exp-{index:02d}"
        revision["rev"] = f"{index:040x}"
        revision["data"]["params"]["params.yaml"]["data"]["train"]["lr"] = 0.001 * (index + 2)
        revision["data"]["params"]["params.yaml"]["data"]["folds"]["lr"] = 0.01 * (index + 2)
        evaluate = revision["data"]["metrics"]["reports/metrics/evaluate.json"]["data"]
        evaluate["accuracy"] = round(0.5 + index / 100, 6)
        evaluate["worst_group_accuracy"] = round(0.45 + (index % 7) / 100, 6)
        groups.append(group)
    baseline["experiments"] = groups
    return show


def exps(tmp_path, capsys, show: list, *args: str) -> tuple[int, str, str]:
    path = tmp_path / "show.json"
    path.write_text(json.dumps(show))
    code = curate(["exps", "--json", str(path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def blocks(table: str) -> int:
    """How many blocks of columns the terminal table was cut into."""
    return sum(1 for line in table.splitlines() if re.match(r"^-+  ", line))


@pytest.mark.parametrize("count", [1, 5, 30])
@pytest.mark.parametrize("width", [80, 120])
def test_the_table_fits_the_terminal_and_wraps_rather_than_cut(tmp_path, capsys, count, width):
    code, table, _ = exps(tmp_path, capsys, with_experiments(count), "--width", str(width))
    assert code == 0
    assert max(map(len, table.splitlines())) <= width and "…" not in table, table
    names = ["master", *(f"exp-{i:02d}" for i in range(count))]
    for name in names:  # every experiment, in every block
        assert len(re.findall(rf"^{name} ", table, flags=re.MULTILINE)) == blocks(table), name
    for header in ("strategy", "accuracy", "dropped", "passed"):
        assert header in table
    # train.lr and folds.lr both changed: each keeps its section to tell them apart.
    assert " folds.lr " in table and " train.lr " in table and "strategy = rebalance.strategy" in table
    assert blocks(table) >= 2 if width == 80 else blocks(table) <= 2


def test_the_recorded_run_at_120_columns_shows_every_row_and_the_change(tmp_path, capsys):
    code, table, _ = exps(tmp_path, capsys, recorded(), "--width", "120")
    assert code == 0 and max(map(len, table.splitlines())) <= 120
    lines = table.splitlines()
    row = {name: next(line for line in lines if line.startswith(name)) for name in ("master", "keep")}
    assert "0 -88" in row["keep"]  # clean.dropped: 0, 88 fewer than the baseline
    assert " keep " in row["keep"] and " drop " in row["master"]  # clean.action, a changed param
    assert re.search(r"^broken \(failed\)", table, flags=re.MULTILINE)
    assert re.search(r"^waiting \(queued\)", table, flags=re.MULTILINE)
    assert "workspace" not in table  # the same as its baseline: no row of its own
    assert "1.000*" in row["master"]  # the best group share ratio, marked


def test_an_edited_workspace_has_its_own_row(tmp_path, capsys):
    show = recorded()
    show[0]["data"]["params"]["params.yaml"]["data"]["train"]["epochs"] = 3
    _, table, _ = exps(tmp_path, capsys, show, "--width", "120")
    assert re.search(r"^workspace ", table, flags=re.MULTILINE) and "epochs" in table


def test_markdown_is_one_table_with_escaped_names(tmp_path, capsys):
    show = with_experiments(5)
    show[1]["experiments"][0]["name"] = NASTY
    code, text, _ = exps(tmp_path, capsys, show, "--md")
    assert code == 0
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 6  # header, alignment, the baseline and 5 experiments
    cells = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
    assert len(cells) == 1, rows  # every row has as many cells; the name's | is an entity
    assert "<img" not in text and "&lt;img" in text
    assert "**0.540 +0.433**" in text  # the best accuracy (exp-04) in bold, with its change


def test_csv_has_every_value_in_full(tmp_path, capsys):
    _, text, _ = exps(tmp_path, capsys, recorded(), "--csv", "--view", "all")
    rows = list(csv.DictReader(io.StringIO(text)))
    by_name = {row["experiment"]: row for row in rows}
    assert by_name["master"]["clean.detect_precision"] == "0.102273"
    assert by_name["broken"]["state"] == "failed" and by_name["waiting"]["state"] == "queued"
    assert by_name["keep"]["clean.action"] == "keep"


def test_sort_puts_the_best_first_and_keeps_the_baseline_on_top(tmp_path, capsys):
    _, text, _ = exps(tmp_path, capsys, with_experiments(5), "--csv", "--sort", "accuracy")
    order = [row["experiment"] for row in csv.DictReader(io.StringIO(text))]
    assert order == ["master", "exp-04", "exp-03", "exp-02", "exp-01", "exp-00"]
    code, _, err = exps(tmp_path, capsys, recorded(), "--sort", "nope")
    assert code == 2 and err.count("\n") == 1 and "--sort nope" in err


def test_views_come_from_the_stages_declarations():
    declared = declarations()
    data = {column.key for column in metric_columns(declared, "data")}
    model = {column.key for column in metric_columns(declared, "model")}
    glance = {column.key for column in metric_columns(declared, "glance")}
    assert {"clean.dropped", "clean.detect_f1", "rebalance.group_share_ratio_after"} <= data
    assert {"evaluate.accuracy", "evaluate.worst_group_accuracy", "evaluate.accuracy_gap"} <= model
    assert not data & model
    for name, stage in declared.items():
        assert {f"{name}.{metric}" for metric in stage.glance} <= glance
        assert set(stage.glance) <= set(stage.metrics), name
    # Which way is better comes from the gates where one bounds the metric.
    assert declared["evaluate"].better("accuracy_gap") == "lower"
    assert declared["evaluate"].better("accuracy") == "higher"
    assert declared["clean"].better("dropped") is None


def test_a_metric_no_run_has_is_no_column():
    show = recorded()
    for revision in [show[0], show[1], *(r for g in show[1]["experiments"] for r in g["revs"])]:
        clean = ((revision.get("data") or {}).get("metrics") or {}).get("reports/metrics/clean.json")
        if clean:
            clean["data"].pop("detect_f1")  # no true labels
    table = build_table(runs(show), declarations(), "glance", None)
    assert "clean.detect_f1" not in {column.key for column in table.columns}


def test_short_names_keep_what_tells_keys_apart():
    assert short_names(["clean.action", "train.seed", "folds.seed", "a.b.c"]) == {
        "clean.action": "action", "train.seed": "train.seed", "folds.seed": "folds.seed", "a.b.c": "c",
    }  # fmt: skip


def test_a_document_that_is_not_dvc_exp_show_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    for text in ("{not json", '{"rev": "x"}'):
        bad.write_text(text)
        assert curate(["exps", "--json", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(bad) in err


@browser_test
def test_the_page_draws_its_plots_offline_with_names_escaped(tmp_path, capsys, browser):
    from playwright.sync_api import expect

    show = with_experiments(5)
    show[1]["experiments"][0]["name"] = NASTY
    page_path = tmp_path / "exps.html"
    exps(tmp_path, capsys, show, "--html", str(page_path))
    html = page_path.read_text()
    assert "<script" not in html and "Content-Security-Policy" in html and "<img src=x" not in html
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, requests = [], []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("request", lambda request: requests.append(request.url))
    page.goto(page_path.as_uri())
    shoot(page, "exps")
    expect(page.locator("table.exps tr")).to_have_count(7)  # header, baseline, 5 experiments
    expect(page.locator("table.exps")).to_contain_text(NASTY)  # shown as text
    figures = page.locator("figure svg")
    expect(figures).to_have_count(2)
    for index in range(2):
        box = figures.nth(index).bounding_box()
        assert box and box["width"] > 200 and box["height"] > 150
        assert "(baseline)" in figures.nth(index).text_content()
    assert "Accuracy against worst-group accuracy" in page.content()
    assert errors == [] and requests == [page_path.as_uri()]


def test_the_page_says_why_a_plot_is_left_out(tmp_path, capsys):
    show = recorded()
    for revision in [show[0], show[1], *(r for g in show[1]["experiments"] for r in g["revs"])]:
        clean = ((revision.get("data") or {}).get("metrics") or {}).get("reports/metrics/clean.json")
        if clean:
            clean["data"].pop("detect_f1")
    page_path = tmp_path / "exps.html"
    exps(tmp_path, capsys, show, "--html", str(page_path))
    html = page_path.read_text()
    assert html.count("<svg") == 1 and "left out, as no run has true labels" in html

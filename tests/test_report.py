import json
import re

import numpy as np
import pytest
from PIL import Image

from curate import dag
from curate.curation.gates import Check, Verdict
from curate.errors import CurateError
from curate.params import Params
from curate.people.declared import declarations
from curate.report import bar_chart, thumbnail
from curate.report import render as render_module
from curate.report.render import (
    CSP,
    ENV,
    merge_figures,
    metrics_json,
    read_figures,
    split_figures,
)
from curate.report.writer import write_stage
from curate.stages import evaluate, ingest
from tests.conftest import REPO, set_params

NASTY_CLASS = "<img src=x onerror=alert(1)>"
NASTY_GROUP = "<b>x"


def assert_safe_html(html: str) -> None:
    csp_attribute = CSP.replace("'", "&#39;")
    assert f'<meta http-equiv="Content-Security-Policy" content="{csp_attribute}">' in html
    assert "<script" not in html.lower()
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_environment_autoescapes():
    assert ENV.autoescape is True


def test_bar_chart_is_byte_stable_and_escapes_labels():
    args = (["a", "--><script>alert(1)</script>", "$x$"], {"g1": [1, 2, 3], "<g2>": [3, 2, 1]})
    first = bar_chart(*args, key="t")
    assert first == bar_chart(*args, key="t")
    assert first.startswith("<svg") and "<script" not in first
    assert "&lt;g2&gt;" in first
    assert bar_chart(*args, key="other") != first  # ids salted per chart


def test_thumbnail_is_png_data_uri_and_stable():
    image = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    uri = thumbnail(image)
    assert uri.startswith("data:image/png;base64,") and uri == thumbnail(image)
    assert thumbnail(np.zeros((8, 8, 3), dtype=np.uint8)).startswith("data:image/png;base64,")


def test_verdict_status():
    assert Verdict().status == "pass"
    assert Verdict(warnings=["w"]).status == "warn"
    assert Verdict([Check("x", 1, "<= 0", False)]).status == "fail"


def test_markdown_structure_characters_are_neutralised():
    context = {
        "verdict": Verdict([Check("a|b", 1, "<= 2", True)], ["`code` [link](http://e) *x*"]),
    }
    markdown = ENV.from_string('{% import "macros.md" as md %}{{ md.verdict(verdict) }}').render(**context)
    assert "| a&#124;b |" in markdown
    assert "[link]" not in markdown and "`code`" not in markdown and "*x*" not in markdown


def test_metrics_json_sorted_rounded_plain():
    text = metrics_json({"b": np.float32(0.1234567891), "a": np.int64(3), "c": float("nan")})
    assert text == '{\n  "a": 3,\n  "b": 0.123457,\n  "c": null\n}\n'


def test_headline_is_a_fixed_few_columns_per_stage():
    # The columns of dvc exp show: at most 20 in all, whatever the number of classes or groups.
    headline = {name: stage.metrics for name, stage in declarations(REPO / "dvc.yaml").items()}
    assert {name for name, keys in headline.items() if keys} == {*dag.reporting(REPO / "dvc.yaml"), "gate"}
    assert sum(map(len, headline.values())) <= 20
    assert "images_per_second" not in headline["train_report"]  # measured: it differs on every run


def test_write_stage_splits_headline_metrics_from_details(workdir):
    figures = {"accuracy": np.float64(0.5), "n_test": 4, "ece": float("nan"),
               "by_group": {"a": {"accuracy": 0.25}}, "confusion_matrix": [[1, 0], [0, 3]]}  # fmt: skip
    write_stage(ingest.STAGE, Params(), {"n_train": 7, "n_classes": 2}, _ingest_like_context(), None)
    metrics = json.loads((workdir / "reports/metrics/ingest.json").read_text())
    details = json.loads((workdir / "reports/details/ingest.json").read_text())
    assert (metrics, details) == ({"n_train": 7}, {"n_classes": 2})
    assert read_figures("ingest") == {"n_train": 7, "n_classes": 2}
    headline, rest = split_figures(evaluate.STAGE.metrics, figures)
    assert headline == {"accuracy": 0.5, "ece": figures["ece"]}
    assert set(rest) == {"n_test", "by_group", "confusion_matrix"}
    assert merge_figures(headline, rest) == figures
    assert merge_figures(figures, {}) == figures  # a revision from before the split: metrics only
    assert (workdir / "reports/details/ingest.json").read_text() == metrics_json({"n_classes": 2})


def test_write_stage_refuses_oversized_html(tmp_path, monkeypatch):
    monkeypatch.setattr(render_module, "MAX_REPORT_BYTES", 100)
    with pytest.raises(CurateError, match=r"reports/ingest.html: .* over the 100-byte cap"):
        write_stage(ingest.STAGE, Params(), {}, _ingest_like_context(), None, reports_dir=tmp_path)
    assert not list(tmp_path.rglob("*.html"))


def _ingest_like_context():
    return {
        "source": "s",
        "is_demo": False,
        "demo": None,
        "image": {"size": 8, "channels": 1, "normalize_polarity": "off"},
        "verdict": Verdict(),
        "headline": [],
        "count_headers": ["class"],
        "count_rows": [],
        "chart": "",
        "thumbnails": [],
        "source_sizes": [],
        "source_modes": [],
        "conversions": [],
        "skipped_counts": [],
        "skipped": [],
        "skipped_more": 0,
        "polarity": {"summary": "n/a (off)", "rows": []},
        "noise_by_group": [],
    }


def test_ingest_report_escapes_user_names_and_is_deterministic(workdir):
    source = workdir / "src images"
    for cls in (NASTY_CLASS, "plain"):
        for i in range(12):
            (source / cls).mkdir(parents=True, exist_ok=True)
            Image.new("L", (10, 10), color=20 * i).save(source / cls / f"{i}.png")
    (source / NASTY_CLASS / "bad|name.png").write_bytes(b"junk")
    rows = ["path,group"] + [
        f"{cls}/{i}.png,{NASTY_GROUP}" for cls in (NASTY_CLASS, "plain") for i in range(6)
    ]
    (source / "metadata.csv").write_text("\n".join(rows) + "\n")
    set_params(workdir / "params.yaml", ingest={"source": "src images", "unlisted": "default_group"})

    assert ingest.main([]) == 0
    html = (workdir / "reports/ingest.html").read_text()
    markdown = (workdir / "reports/ingest.md").read_text()
    assert_safe_html(html)
    for text in (html, markdown):
        assert NASTY_CLASS not in text and NASTY_GROUP not in text
        assert "&lt;img src=x onerror=alert(1)&gt;" in text
        assert "&lt;b&gt;x" in text
        assert "bad|name.png" not in text and "bad&#124;name.png" in text
    assert str(workdir) not in html and str(workdir) not in markdown

    first = {p: (workdir / "reports" / p).read_bytes() for p in ("ingest.html", "ingest.md")}
    assert ingest.main([]) == 0
    assert first == {p: (workdir / "reports" / p).read_bytes() for p in ("ingest.html", "ingest.md")}


def test_demo_report_is_small_and_safe(workdir):
    assert ingest.main([]) == 0
    html = (workdir / "reports/ingest.html").read_text()
    assert_safe_html(html)
    assert len(html.encode()) < 2_000_000
    assert html.index('class="verdict') < html.index("<h2>Numbers") < html.index("<h2>Pictures")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3361, "3,361"),
        (124.0, "124"),
        (123.99999999999997, "124"),  # a Kish effective size: whole but for rounding
        (3361.0000000000005, "3,361"),
        (0.0098, "0.010"),
        (14.052, "14.052"),
        (float("nan"), "n/a"),
        (float("inf"), "inf"),  # a ratio over zero: printed, not a crash
        (None, "n/a"),
        (True, "yes"),
    ],
)
def test_numbers_are_formatted_for_people(value, text):
    assert render_module._fmt(value) == text

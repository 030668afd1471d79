"""``curate review``: the review sheet and todo.csv, from hand-made tables (fast)."""

import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from curate import cli
from curate.data.image_rows import write_images
from curate.data.samples import write_samples
from tests.test_report import assert_safe_html
from tests.test_trace import NASTY, clean_table, raw_table

HEADER = "sample_id,path,decision,label,reviewer,note\n"
ACCENTED = "élan/1.png"  # x/1.png's path in these tests, stored decomposed as macOS writes it


@pytest.fixture
def made(workdir):
    """test_trace's tables: flagged train samples e1 (relabel, quality 0.05), d00d-1 (drop, 0.1)
    and e2 (keep, 0.3, group g2, path decomposed); d00d is not flagged, t1 and t2 are test rows."""
    clean = clean_table(raw_table())
    clean.loc[clean["sample_id"] == "e2", "path"] = unicodedata.normalize("NFD", ACCENTED)
    write_samples("data/clean/samples.parquet", clean)
    write_images("data/raw/images", np.arange(6 * 64, dtype=np.uint8).reshape(6, 8, 8, 1))
    return workdir


def review(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["review", *args])
    out, err = capsys.readouterr()
    return code, out, err


def todo() -> str:
    return Path("data/review/todo.csv").read_text()


def ledger(*rows: str) -> None:
    path = Path("data/review/decisions.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "".join(f"{row}\n" for row in rows))


def test_most_suspicious_first_with_suggested_decisions(made, capsys):
    code, out, err = review(capsys)
    assert (code, err) == (0, "")
    nfd = unicodedata.normalize("NFD", ACCENTED)
    assert todo() == HEADER + f"e1,x/0.png,relabel,cat,,\nd00d-1,cat/1.png,drop,,,\ne2,{nfd},keep,,,\n"
    assert "3 flagged, 0 decided in data/review/decisions.csv, 3 undecided (filters: none)" in out
    assert "| 1 | x/0.png | &lt;b&gt;x&lt;/b&gt; | cat | 0.05 | relabel to cat | curate trace e1 |" in out
    assert "| 2 | cat/1.png | cat | &lt;b&gt;x&lt;/b&gt; | 0.1 | drop | curate trace d00d-1 |" in out
    html = Path("reports/review.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3
    assert html.index("curate trace e1") < html.index("curate trace d00d-1") < html.index("curate trace e2")


def test_decided_samples_are_left_out_by_id_and_by_path(made, capsys):
    ledger("d00d-1,,keep,,ann,", f",{ACCENTED},drop,,bob,typed NFC")  # e2's path, composed
    code, out, _ = review(capsys)
    assert code == 0
    assert todo() == HEADER + "e1,x/0.png,relabel,cat,,\n"
    assert "3 flagged, 2 decided in data/review/decisions.csv, 1 undecided" in out


def test_nothing_left_to_review(made, capsys):
    ledger("e1,,drop,,a,", "d00d-1,,drop,,a,", "e2,,drop,,a,")
    code, out, _ = review(capsys)
    assert code == 0 and todo() == HEADER
    assert "**Verdict: PASS**" in out
    assert "Nothing to review" in Path("reports/review.html").read_text()


def test_filters_and_limit(made, capsys):
    review(capsys, "--class", "cat")
    assert todo() == HEADER + "d00d-1,cat/1.png,drop,,,\n"
    code, out, _ = review(capsys, "--group", "g2", "--class", NASTY)
    assert code == 0 and todo().splitlines()[1:] == [f"e2,{unicodedata.normalize('NFD', ACCENTED)},keep,,,"]
    assert "(filters: class &lt;b&gt;x&lt;/b&gt;, group g2)" in out
    review(capsys, "--limit", "1")
    assert todo() == HEADER + "e1,x/0.png,relabel,cat,,\n"


def test_unknown_filter_values_stop_with_one_line(made, capsys):
    review(capsys)
    before = todo()
    assert review(capsys, "--class", "cta") == (
        2, "", "curate: error: --class cta: no such class in data/clean/samples.parquet; did you mean cat?\n"
    )  # fmt: skip
    assert review(capsys, "--group", "zz")[2] == (
        "curate: error: --group zz: no such group in data/clean/samples.parquet; one of g1, g2\n"
    )
    assert todo() == before  # the previous sheet is untouched


def test_missing_clean_table(workdir, capsys):
    assert review(capsys) == (
        2, "", "curate: error: data/clean/samples.parquet: not found (run the pipeline first: dvc repro)\n"
    )  # fmt: skip


def test_a_bad_ledger_stops_review_as_it_stops_clean(made, capsys):
    Path("data/review").mkdir(parents=True)
    Path("data/review/decisions.csv").write_text("id,decision\nx,drop\n")
    code, _, err = review(capsys)
    assert code == 2 and err.startswith("curate: error: data/review/decisions.csv: unknown column 'id'")


def test_deterministic_escaped_and_self_contained(made, capsys):
    review(capsys, "--html", "a.html")
    first = (Path("a.html").read_bytes(), todo(), capsys.readouterr())
    review(capsys, "--html", "b.html")
    assert Path("b.html").read_bytes() == first[0] and todo() == first[1]
    html = first[0].decode()
    assert_safe_html(html)
    assert NASTY not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert str(made) not in html  # no absolute paths


def test_review_starts_without_torch():
    code = "import sys, curate.people.review; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

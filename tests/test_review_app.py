"""``curate review --serve``: the review app, as a reviewer and as an attacker use it.

The server runs as people run it (``curate review --serve --port 0`` in a subprocess) over
test_trace's hand-made clean table, whose class ``<b>x</b>`` and a file named like a script
tag are the HTML payloads. Browser tests drive Debian's headless Chromium through Playwright
and skip, saying why, where either is missing. ``CURATE_SHOTS=DIR`` saves screenshots there.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from benchmarks._common import Server
from curate.data import ledger
from curate.data.image_rows import write_images
from curate.data.samples import write_samples
from curate.people.review_app.guard import Guard
from curate.people.review_app.journal import Journal
from curate.people.review_app.server import Queue, build_app
from tests.browser import browser_test, shoot
from tests.test_trace import NASTY, clean_table, raw_table

LEDGER = Path("data/review/decisions.csv")
PAYLOAD_PATH = "x/<img src=x onerror=window.pwned=1>.png"  # e2's file name


@pytest.fixture
def project(workdir):
    """Flagged train samples e1 (quality 0.05), d00d-1 (0.1), e2 (0.3, a script-tag file name);
    d00d and d00d-1 are a near-duplicate set; classes ``<b>x</b>`` and ``cat``."""
    clean = clean_table(raw_table())
    clean.loc[clean["sample_id"] == "e2", "path"] = PAYLOAD_PATH
    clean.loc[clean["sample_id"].isin(["d00d", "d00d-1"]), ["is_near_duplicate", "duplicate_set"]] = [True, 0]
    write_samples("data/clean/samples.parquet", clean)
    write_images("data/raw/images", np.arange(6 * 64, dtype=np.uint8).reshape(6, 8, 8, 1))
    return workdir


@pytest.fixture
def serve(project):
    started: list[Server] = []

    def start(reviewer: str = "ann", *options: str) -> Server:
        started.append(Server(project, reviewer, options))
        return started[-1]

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop()


def rows() -> list[list[str]]:
    return ledger.read_ledger(LEDGER).values.tolist()


def test_decisions_undo_and_conflicts_over_http(serve):
    server = serve()
    assert server.post("/api/decide", sample_id="e1", decision="keep").json()["decision"]["line"] == 2
    conflict = server.post("/api/decide", sample_id="e1", decision="drop")
    assert conflict.status_code == 409 and conflict.json()["first"]["decision"] == "keep"
    assert "decided already on line 2 (keep by ann): undo it first" in conflict.json()["error"]
    refused = server.post("/api/decide", sample_id="e2", decision="relabel", label="dog")
    assert refused.status_code == 400
    message = f"{LEDGER} (new line): label 'dog' is not a class (classes: {NASTY}, cat)"
    assert refused.json()["error"] == message  # the ledger's own check, word for word
    assert server.post("/api/undo", sample_id="e1").json()["decision"] is None
    assert server.post("/api/undo", sample_id="e1").status_code == 409  # nothing left to undo
    assert server.post("/api/decide", sample_id="e1", decision="drop", note="=HYPERLINK()").status_code == 200
    assert server.post("/api/decide", sample_id="t1", decision="drop").status_code == 404  # a test row
    assert rows() == [
        ["e1", "x/0.png", "keep", "", "ann", "", ""],
        ["e1", "x/0.png", "undo", "", "ann", "", ""],
        ["e1", "x/0.png", "drop", "", "ann", "=HYPERLINK()", ""],
    ]
    assert "'=HYPERLINK()" in LEDGER.read_text()  # neutralised on disk, restored on read
    page = server.client.get("/api/queue", params={"kind": "duplicate"}).json()
    assert [item["sample_id"] for item in page["items"]] == ["d00d-1", "d00d"]  # label issues first
    assert [item["duplicates"] for item in page["items"]] == [["d00d"], ["d00d-1"]]
    assert [item["kinds"] for item in page["items"]] == [["label", "duplicate"], ["duplicate"]]
    assert page["progress"] == {"decided": 1, "total": 4, "reviewed_label_flags": 1, "confirmed": 1}


def test_each_refusal(serve):
    server = serve()
    bare = httpx.Client(base_url=server.base, timeout=10)
    answers = {
        "no token": bare.get("/api/queue"),
        "wrong token": bare.get("/", params={"token": "guess"}),
        "no CSRF token": server.client.post("/api/decide", json={"sample_id": "e1", "decision": "keep"}),
        "wrong CSRF token": server.client.post(
            "/api/decide", json={"sample_id": "e1", "decision": "keep"}, headers={"X-CSRF-Token": "x"}
        ),
        "form post": server.client.post(
            "/api/decide", data={"sample_id": "e1", "decision": "keep"}, headers={"X-CSRF-Token": server.csrf}
        ),
        "foreign Host": server.client.get("/api/queue", headers={"Host": "rebind.example:80"}),
    }
    for case, answer in answers.items():
        assert answer.status_code == 403, case
    assert "DNS rebinding" in answers["foreign Host"].json()["error"]
    for traversal in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/params.yaml", "/etc/passwd"):
        assert server.client.get(f"/api/image/{traversal}").status_code == 404, traversal
    assert server.client.get("/api/image/e1").headers["content-type"] == "image/png"
    assert not LEDGER.exists()  # nothing refused wrote anything
    bare.close()


def test_two_servers_on_one_ledger_keep_both_decisions(serve):
    ann, bo = serve("ann"), serve("bo")
    assert ann.post("/api/decide", sample_id="e1", decision="keep").status_code == 200
    assert bo.post("/api/decide", sample_id="e2", decision="drop").status_code == 200
    late = bo.post("/api/decide", sample_id="e1", decision="drop")  # bo's page did not know
    assert late.status_code == 409 and late.json()["first"]["reviewer"] == "ann"
    items = ann.client.get("/api/queue").json()["items"]  # ann's page sees bo's decision
    assert [item["decision"]["reviewer"] for item in items if item["decision"]] == ["ann", "bo"]
    assert rows() == [
        ["e1", "x/0.png", "keep", "", "ann", "", ""],
        ["e2", PAYLOAD_PATH, "drop", "", "bo", "", ""],
    ]
    with open(LEDGER, "a") as handle:  # a hand edit that clean would refuse
        handle.write("e2,,dorp,,eve,\n")
    broken = ann.client.get("/api/queue")
    assert broken.status_code == 500 and "line 4: decision 'dorp' is not one of" in broken.json()["error"]
    assert ann.post("/api/decide", sample_id="d00d", decision="keep").status_code == 400  # nothing written
    assert LEDGER.read_text().count("\n") == 4


def test_sigkill_mid_review_leaves_a_ledger_that_parses_with_every_acknowledged_decision(serve):
    server = serve()
    acknowledged: list[str] = []
    ids = [f"s{i}" for i in range(400)]
    clean = pd.read_parquet("data/clean/samples.parquet")
    many = pd.concat([clean] + [clean.iloc[[0]].assign(sample_id=sid, path=f"{sid}.png") for sid in ids])
    write_samples("data/clean/samples.parquet", many.reset_index(drop=True))
    server.stop()
    server = serve()

    def review() -> None:
        for sid in ids:
            try:
                answer = server.post("/api/decide", sample_id=sid, decision="drop", note="x" * 2000)
            except httpx.TransportError:
                return
            if answer.status_code == 200:
                acknowledged.append(sid)

    writer = threading.Thread(target=review)
    writer.start()
    while len(acknowledged) < 20:
        time.sleep(0.005)
    server.stop(signal.SIGKILL)
    writer.join()
    written = ledger.read_ledger(LEDGER)
    assert set(acknowledged) <= set(written["sample_id"]) and len(acknowledged) >= 20
    assert (written["decision"] == "drop").all() and written["note"].str.len().eq(2000).all()


def test_a_hundred_thousand_flags_page_without_loading_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    n = 100_000
    clean = pd.DataFrame(
        {
            "sample_id": [f"{i:06x}" for i in range(n)],
            "path": [f"c{i % 10}/{i}.png" for i in range(n)],
            "row": np.arange(n),
            "label": np.arange(n) % 10,
            "label_name": [f"c{i % 10}" for i in range(n)],
            "group": np.where(np.arange(n) % 3, "g1", "g2"),
            "split": "train",
            "given_label": np.arange(n) % 10,
            "predicted_label": (np.arange(n) + 1) % 10,
            "label_quality": np.random.default_rng(0).random(n),
            "is_label_issue": True,
            "action": "drop",
        }
    )
    write_images("data/raw/images", np.zeros((n, 8, 8, 1), dtype=np.uint8))
    started = time.perf_counter()
    journal = Journal(LEDGER, [f"c{i}" for i in range(10)], "ann")
    app = build_app(Queue(clean, journal), Guard("127.0.0.1", 1), str(LEDGER))
    built = time.perf_counter() - started
    from starlette.testclient import TestClient

    client = TestClient(app, base_url="http://127.0.0.1:1", headers={"X-Curate-Token": app_token(app)})
    started = time.perf_counter()
    page = client.get("/api/queue", params={"offset": 99_950, "limit": 50, "class": "c3"}).json()
    served = time.perf_counter() - started
    assert page["total"] == n // 10 and page["items"] == []  # past the end of the c3 flags
    page = client.get("/api/queue", params={"offset": 500, "limit": 50}).json()
    assert page["total"] == n and len(page["items"]) == 50 and page["progress"]["total"] == n
    qualities = [item["quality"] for item in page["items"]]
    assert qualities == sorted(qualities)
    print(f"100k flags: queue built in {built:.2f} s, a filtered page served in {served * 1000:.0f} ms")
    assert built < 10 and served < 1


OLD_HEADER = "sample_id,path,decision,label,reviewer,note\n"  # a ledger from before audits


def test_an_audit_line_adds_the_audit_column_to_an_old_ledger(tmp_path):
    path = tmp_path / "decisions.csv"
    path.write_text(OLD_HEADER + 'e1,x/0.png,keep,,ann,"a, note"\n')
    bo, cy = Journal(path, [NASTY, "cat"], "bo"), Journal(path, [NASTY, "cat"], "cy")  # two servers
    bo.decide("d00d-1", "cat/1.png", "drop")  # no band: the old header's six fields, as before
    lines = path.read_bytes()
    assert lines.endswith(b"\nd00d-1,cat/1.png,drop,,bo,\n")
    assert bo.decide("e2", PAYLOAD_PATH, "relabel", "cat", audit="3 of 4")["audit"] == "3 of 4"
    assert cy.decide("d00d", "x/3.png", "keep")["line"] == 5  # cy reads the new file
    assert path.read_bytes() == (
        OLD_HEADER.replace("note", "note,audit").encode()
        + lines[len(OLD_HEADER) :]  # the old lines, byte for byte
        + f"e2,{PAYLOAD_PATH},relabel,cat,bo,,3 of 4\nd00d,x/3.png,keep,,cy,,\n".encode()
    )
    assert ledger.read_ledger(path)["audit"].tolist() == ["", "", "3 of 4", ""]


def test_a_writer_that_waited_on_a_replaced_ledger_appends_to_the_new_one(tmp_path):
    path = tmp_path / "decisions.csv"
    path.write_text(OLD_HEADER)
    journal = Journal(path, [NASTY, "cat"], "bo")
    with open(path, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another server adding the audit column
        writer = threading.Thread(target=journal.decide, args=("e1", "x/0.png", "keep"))
        writer.start()
        time.sleep(0.2)  # the writer has opened the old file and waits for its lock
        (tmp_path / "new.csv").write_text(OLD_HEADER.replace("note", "note,audit"))
        os.replace(tmp_path / "new.csv", path)
    writer.join()
    assert path.read_text() == OLD_HEADER.replace("note", "note,audit") + "e1,x/0.png,keep,,bo,,\n"


def app_token(app) -> str:
    """The token of an app :func:`build_app` made (its guard middleware's)."""
    return next(m.kwargs["guard"].token for m in app.user_middleware)


# --- in a real browser ------------------------------------------------------------------


def open_app(browser, server: Server):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    started = time.perf_counter()
    page.goto(server.url)
    expect(page.locator("#path")).not_to_be_empty()
    return page, time.perf_counter() - started, errors


@browser_test
def test_five_keyboard_decisions_reach_the_ledger_and_survive_a_restart(serve, browser):
    from playwright.sync_api import expect

    server = serve()
    page, first_screen, errors = open_app(browser, server)
    assert page.url == server.base + "/"  # the token left the address bar
    assert page.text_content("#given") == NASTY and page.locator("#given b").count() == 0
    shoot(page, "1-first-card")
    started = time.perf_counter()
    page.keyboard.press("k")  # e1: keep
    expect(page.locator("#path")).to_have_text("cat/1.png")
    page.keyboard.press("d")  # d00d-1: drop
    expect(page.locator("#path")).to_have_text(PAYLOAD_PATH)
    page.keyboard.press("r")  # e2: relabel through the picker
    page.keyboard.type("ca")
    shoot(page, "2-class-picker")
    page.keyboard.press("Enter")
    expect(page.locator("#message")).to_contain_text("line 4")
    page.keyboard.press("u")  # take the relabel back
    expect(page.locator("#message")).to_contain_text("undone")
    page.keyboard.press("d")  # e2: drop instead
    expect(page.locator("#message")).to_contain_text("line 6")
    elapsed = time.perf_counter() - started
    print(f"first screen {first_screen * 1000:.0f} ms; 5 keyboard actions in {elapsed:.2f} s")
    assert page.evaluate("window.pwned") is None and errors == []
    assert page.text_content("#progress").startswith("decided 3 / 4 flags · review precision so far 67%")
    page.keyboard.press("?")
    shoot(page, "3-help")
    assert rows() == [
        ["e1", "x/0.png", "keep", "", "ann", "", ""],
        ["d00d-1", "cat/1.png", "drop", "", "ann", "", ""],
        ["e2", PAYLOAD_PATH, "relabel", "cat", "ann", "", ""],
        ["e2", PAYLOAD_PATH, "undo", "", "ann", "", ""],
        ["e2", PAYLOAD_PATH, "drop", "", "ann", "", ""],
    ]
    server.stop()
    again = serve()
    page, _, _ = open_app(browser, again)
    assert page.text_content("#decision") == "keep · ann · ledger line 2"
    page.keyboard.press("ArrowRight")
    expect(page.locator("#decision")).to_contain_text("drop · ann")
    page.keyboard.press("k")  # decided already: the first decision is shown, nothing written
    expect(page.locator("#message")).to_contain_text("undo it first")
    shoot(page, "4-after-restart-conflict")
    page.keyboard.press("u")  # after a restart, u takes back the decision on the card shown
    expect(page.locator("#decision")).to_have_text("undecided")
    assert rows()[5:] == [["d00d-1", "cat/1.png", "undo", "", "ann", "", ""]]


@browser_test
def test_an_audit_writes_the_bands_to_the_ledger_and_shows_the_estimate(serve, browser):
    from playwright.sync_api import expect

    server = serve("ann", "--audit", "3")  # 4 bands (params.yaml) over 3 label flags: one each, one empty
    page, _, errors = open_app(browser, server)
    assert page.locator("#filters").is_hidden()
    title = "· audit of 3 flags, a random sample by label-quality band (seed 0)"
    assert page.text_content("#audit-title") == title
    assert page.text_content("#position") == "flag 1 of 3 · audit band 1 of 4"
    page.keyboard.press("k")  # e1, band 1: keep (the flag overturned)
    expect(page.locator("#path")).to_have_text("cat/1.png")
    page.keyboard.press("d")  # d00d-1, band 2: drop (confirmed)
    expect(page.locator("#message")).to_contain_text("line 3")
    page.keyboard.press("u")  # back to d00d-1: its undo line has no band
    expect(page.locator("#message")).to_contain_text("undone")
    page.keyboard.press("d")
    expect(page.locator("#message")).to_contain_text("line 5")
    expect(page.locator("#audit-bands li")).to_have_text(
        [
            "band 1 (quality 0.050–0.050): 1 of 1 counted, 0 confirmed, 0% (0–79%)",
            "band 2 (quality 0.100–0.100): 1 of 1 counted, 1 confirmed, 100% (21–100%)",
            "band 3 (quality 0.300–0.300): 0 of 1 counted, 0 confirmed",
            "band 4: no flags",
        ]
    )
    overall = "audited precision 50% (95% interval 9–91%) over 2 counted flags"
    assert page.text_content("#audit-overall") == overall
    shoot(page, "5-audit")
    assert errors == []
    assert LEDGER.read_text().splitlines()[0] == ",".join(ledger.COLUMNS)
    assert [row[2:] for row in rows()] == [
        ["keep", "", "ann", "", "1 of 4"],
        ["drop", "", "ann", "", "2 of 4"],
        ["undo", "", "ann", "", ""],
        ["drop", "", "ann", "", "2 of 4"],
    ]

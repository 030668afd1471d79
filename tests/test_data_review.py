"""A review cycle as a team lives it, on the tiny project: people decide flags in the review app,
someone loosens a clean param, ``dvc repro`` applies both without refitting the folds, the change
is committed, and scripts/data_review.sh, the pull-request review, writes the comment that leads
with what changed. One dvc repro serves every step (it is the costly part)."""

from __future__ import annotations

import re
import subprocess

import pandas as pd
import pytest
import yaml

from benchmarks._common import Server
from tests.conftest import GIT, REPO, STAGES, ran, run, set_params

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "data_review.sh"


def cache_file(root, path: str):
    """Where the DVC cache keeps the committed version of ``path`` (an out of dvc.lock)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    md5 = next(out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
               if out["path"] == path)  # fmt: skip
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def decide_in_the_app(root) -> tuple[str, str, str]:
    """Keep the first flag of the app's queue, relabel the second: ``(kept, relabelled, label)``."""
    server = Server(root, "ann")
    first, second = server.client.get("/api/queue").json()["items"][:2]
    assert server.post("/api/decide", sample_id=first["sample_id"], decision="keep").status_code == 200
    target = next(name for name in ("0", "1", "2") if name not in (second["given"], second["suggested"]))
    relabel = {"sample_id": second["sample_id"], "decision": "relabel", "label": target}
    assert server.post("/api/decide", **relabel).status_code == 200
    server.stop()
    return first["sample_id"], second["sample_id"], target


def test_a_review_cycle_from_the_app_to_the_pull_request_comment(tiny_copy, tmp_path):
    root = tiny_copy
    kept, relabelled, target = decide_in_the_app(root)
    set_params(root / "params.yaml", clean={"max_drop_fraction": 0.05})

    # How the predictions are acted on is not how they are made: the K-fold training is cached.
    assert ran(run("dvc", "repro", cwd=root)) == set(STAGES) - {"ingest", "folds"}
    cleaned = pd.read_parquet(root / "data/clean/samples.parquet").set_index("sample_id")
    assert cleaned.loc[kept, ["action", "action_source"]].tolist() == ["keep", "review"]
    assert cleaned.loc[relabelled, ["action", "label_name"]].tolist() == ["relabel", target]
    for table in ("balanced", "augmented"):  # the relabel reaches every later table
        rows = pd.read_parquet(root / f"data/{table}/samples.parquet").query("sample_id == @relabelled")
        assert len(rows) and (rows["label_name"] == target).all() and (rows["label"] == int(target)).all()
    augmented = pd.read_parquet(root / "data/augmented/samples.parquet")
    copies = augmented[augmented.get("parent_id", pd.Series(dtype=str)) == relabelled]
    assert (copies["label_name"] == target).all()
    assert "relabels_by_people | 1" in (root / "reports/clean.md").read_text()

    run(*GIT, "add", "-A", cwd=root)
    run(*GIT, "commit", "-q", "-m", "fewer drops, two review decisions", cwd=root)
    before = run("git", "status", "--porcelain", cwd=root)
    # A runner whose cache lacks a piece (no remote, a cache from an older run): the model.
    model = cache_file(root, "models/model.pt")
    model.unlink()

    out = tmp_path / "review"
    log = run("bash", str(SCRIPT), "HEAD~1", "HEAD", str(out), cwd=root)
    assert "base (HEAD~1): no DVC remote, reproducing what the cache lacks" in log, log
    comment = (out / "comment.md").read_text()
    assert comment.startswith("# curate data review: HEAD~1 → HEAD\n")
    first = comment.split("## Look first", 1)[1].split("\n## ", 1)[0]
    changed = re.search(r"train samples: ([\d,]+) added, ([\d,]+) removed, ([\d,]+) relabelled", first)
    assert changed, first
    added = int(changed.group(1).replace(",", ""))
    assert added > 0  # rows the looser cap no longer drops (the relabelled one among them)
    assert "clean.dropped:" in first  # a headline count that moved
    assert "| clean.max_drop_fraction | 0.3000 | 0.0500 |" in comment
    assert f"| {relabelled} |" in comment and f"| {kept} |" in comment  # the decisions added
    both = comment.split("## Both revisions", 1)[1]
    assert both.count("\n| ") >= 3 and "max_drop_fraction" in both  # header and two revisions
    assert (out / "compare.html").is_file() and (out / "exps.html").is_file()
    assert model.is_file()  # reproduced, the same bytes (CPU training is bit for bit here)
    # The workspace is as it was, and no worktree is left behind.
    assert run("git", "status", "--porcelain", cwd=root) == before
    assert run("git", "worktree", "list", cwd=root).count("\n") == 1


def test_bad_revisions_exit_2_saying_which(tiny_copy, tmp_path):
    done = subprocess.run(
        ["bash", str(SCRIPT), "HEAD", "no-such-branch", str(tmp_path / "out")],
        cwd=tiny_copy, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "no-such-branch: not a git revision" in done.stderr

"""scripts/data_review.sh, the pull-request review, run here as the workflow runs it: on the tiny
project, between its commit and a commit that changes a param and the data (a review decision)."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import yaml

from tests.conftest import GIT, REPO, run, set_params

pytestmark = pytest.mark.slow

SCRIPT = REPO / "scripts" / "data_review.sh"


def cache_file(root, path: str):
    """Where the DVC cache keeps the committed version of ``path`` (an out of dvc.lock)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    md5 = next(out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])
               if out["path"] == path)  # fmt: skip
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def test_the_review_leads_with_what_changed(tiny_copy, tmp_path):
    root = tiny_copy
    raw = pd.read_parquet(root / "data/raw/samples.parquet")
    sample = raw[raw["split"] == "train"].iloc[0]
    other = next(name for name in sorted(raw["label_name"].unique()) if name != sample["label_name"])
    with open(root / "data/review/decisions.csv", "a", encoding="utf-8") as ledger:
        ledger.write(f"{sample['sample_id']},{sample['path']},relabel,{other},ana,seen in review\n")
    set_params(root / "params.yaml", clean={"max_drop_fraction": 0.05})
    run("dvc", "repro", cwd=root)  # as the author of a pull request does, before committing
    run(*GIT, "add", "-A", cwd=root)
    run(*GIT, "commit", "-q", "-m", "fewer drops, one relabel", cwd=root)
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
    added, _, relabelled = (int(n.replace(",", "")) for n in changed.groups())
    assert added > 0 and relabelled >= 1  # rows the looser cap no longer drops; the relabel
    assert "clean.dropped:" in first  # a headline count that moved
    assert "| clean.max_drop_fraction | 0.3000 | 0.0500 |" in comment
    assert f"| {sample['sample_id']} |" in comment  # the decision added to the ledger
    both = comment.split("## Both revisions", 1)[1]
    assert both.count("\n| ") >= 3 and "max_drop_fraction" in both  # header and two revisions
    assert (out / "compare.html").is_file() and (out / "exps.html").is_file()
    assert model.is_file()  # reproduced, the same bytes (CPU training is bit for bit here)
    # The workspace is as it was, and no worktree is left behind.
    assert run("git", "status", "--porcelain", cwd=root) == before
    assert run("git", "worktree", "list", cwd=root).count("\n") == 1


def test_bad_revisions_exit_2_saying_which(tiny_copy, tmp_path):
    import subprocess

    done = subprocess.run(
        ["bash", str(SCRIPT), "HEAD", "no-such-branch", str(tmp_path / "out")],
        cwd=tiny_copy, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "no-such-branch: not a git revision" in done.stderr

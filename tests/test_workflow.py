"""The PR workflow cannot run here: check that every curate and dvc command it calls exists
with the options it passes."""

import os
import re
import shlex
import subprocess

import pytest
import yaml

from curate.cli import COMMANDS
from curate.people.compare import build_parser
from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "data-review.yml"


def commands(tool: str) -> list[list[str]]:
    """Every ``tool ...`` command line in the workflow's run steps, as argument lists."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    found = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                substitutions = re.findall(r"\$\(([^)]*)\)", line)
                line = re.sub(r"\$\([^)]*\)", "X", line)
                parts = re.split(r"&&|\|\||;|\||\b(?:if|then|else|fi)\b", line)
                for part in [*substitutions, *parts]:
                    words = shlex.split(part.split(">")[0].strip())
                    if words and words[0] == tool:
                        found.append(words[1:])
    return found


def test_workflow_is_a_pull_request_job_with_a_comment():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow[True if True in workflow else "on"] == "pull_request"  # YAML reads `on` as True
    steps = workflow["jobs"]["review"]["steps"]
    runs = " ".join(step.get("run", "") for step in steps)
    assert 'pip install -e ".[dev]"' in runs
    assert "cml comment update" in runs and "--publish" not in runs


def test_curate_commands_parse():
    calls = commands("curate")
    assert ["compare", "origin/${GITHUB_BASE_REF}", "HEAD"] in calls
    for call in calls:
        assert call[0] in COMMANDS
        if call[0] == "compare":
            args = build_parser().parse_args(call[1:])
            assert args.rev_a.startswith("origin/") and args.rev_b == "HEAD"


@pytest.mark.parametrize("call", commands("dvc"), ids=lambda call: " ".join(call))
def test_dvc_commands_exist_with_their_options(call):
    subcommand = [word for word in call if not word.startswith("-") and "$" not in word][:2]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for depth in (2, 1):
        result = subprocess.run(
            ["dvc", *subcommand[:depth], "--help"], capture_output=True, text=True, env=env
        )
        if result.returncode == 0 and "usage: dvc " + " ".join(subcommand[:depth]) in result.stdout:
            break
    else:
        pytest.fail(f"dvc {' '.join(subcommand)}: no such command")
    for option in (word.split("=")[0] for word in call if word.startswith("-")):
        assert re.search(rf"(^|[\s\[,]){re.escape(option)}\b", result.stdout), f"dvc {call}: {option}"

"""The PR workflow cannot run here: check how it installs, that it calls the review script
(which tests/test_data_review.py runs), and that every curate and dvc command it calls exists
with the options it passes."""

import os
import re
import shlex
import subprocess

import pytest
import yaml

from curate.cli import COMMANDS
from curate.people.compare import build_parser
from curate.people.exps import build_parser as exps_parser
from tests.conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "data-review.yml"
SCRIPT = REPO / "scripts" / "data_review.sh"


def commands(tool: str) -> list[list[str]]:
    """Every ``tool ...`` command line in the workflow's run steps and the review script, as
    argument lists."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    lines = [line for job in workflow["jobs"].values() for step in job["steps"]
             for line in step.get("run", "").splitlines()]  # fmt: skip
    lines += [line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#")]
    found = []
    for line in lines:
        substitutions = re.findall(r"\$\(([^)]*)\)", line)
        for source in [*substitutions, re.sub(r"\$\([^)]*\)", "X", line)]:
            found += [words[1:] for words in simple_commands(source) if words[0] == tool]
    return found


def steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["review"]["steps"]


SEPARATORS = {";", "&&", "||", "|", "(", ")", "{", "}", "!", "if", "then", "else", "fi", "do", "done"}


def simple_commands(line: str) -> list[list[str]]:
    """A shell line's simple commands as argument lists (split at ``;``, ``&&``, pipes and
    keywords outside quotes; redirections dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, words, tokens = [], [], iter(lexer)
    for token in tokens:
        if token in SEPARATORS:
            commands.append(words)
            words = []
        elif set(token) <= set("<>&"):  # a redirection: it and its target go
            next(tokens, None)
        else:
            words.append(token)
    return [words for words in [*commands, words] if words]


def test_workflow_is_a_pull_request_job_with_a_comment():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow[True if True in workflow else "on"] == "pull_request"  # YAML reads `on` as True
    runs = " ".join(step.get("run", "") for step in steps())
    assert "cml comment update" in runs and "review/comment.md" in runs and "--publish" not in runs
    assert workflow["jobs"]["review"]["timeout-minutes"] <= 60


def test_torch_is_the_cpu_build_installed_before_the_project():
    lines = [line.strip() for step in steps() for line in step.get("run", "").splitlines()]
    torch = next(i for i, line in enumerate(lines) if line.startswith("pip install torch"))
    assert shlex.split(lines[torch])[2:] == [
        "torch", "torchvision", "--index-url", "https://download.pytorch.org/whl/cpu",
    ]  # fmt: skip
    project = next(i for i, line in enumerate(lines) if line.startswith("pip install -e"))
    assert torch < project


def test_pip_and_the_dvc_cache_are_kept_between_runs():
    python = next(step for step in steps() if step.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["cache"] == "pip"
    cache = next(step for step in steps() if step.get("uses", "").startswith("actions/cache"))
    assert cache["with"]["path"] == ".dvc/cache" and "dvc.lock" in cache["with"]["key"]


def test_the_review_is_the_script_and_a_fork_gets_an_artifact():
    calls = [shlex.split(line) for step in steps() for line in step.get("run", "").splitlines()
             if line.startswith("scripts/")]  # fmt: skip
    assert calls == [["scripts/data_review.sh", "origin/${GITHUB_BASE_REF}", "HEAD", "review"]]
    assert (REPO / calls[0][0]).stat().st_mode & 0o111  # executable
    same_repo = "github.event.pull_request.head.repo.full_name == github.repository"
    fork = same_repo.replace("==", "!=")
    comment = [step for step in steps() if "cml comment" in step.get("run", "")]
    assert comment and all(step["if"] == same_repo for step in comment)
    notice = next(step for step in steps() if step.get("if") == fork)
    assert "::notice::" in notice["run"] and "artifact" in notice["run"]
    upload = next(step for step in steps() if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == "review/"


def test_curate_commands_parse():
    script = (REPO / "scripts" / "data_review.sh").read_text()
    calls = [shlex.split(line.split(">")[0]) for line in script.splitlines() if line.startswith("curate ")]
    assert [call[1] for call in calls] == ["compare", "exps"]
    for call in calls:
        assert call[1] in COMMANDS
        if call[1] == "compare":
            args = build_parser().parse_args(call[2:])
            assert (args.rev_a, args.rev_b) == ("$base_rev", "$head_rev")
        else:
            args = exps_parser().parse_args(call[2:])
            assert args.md and args.rev == ["$base_rev", "$head_rev"]


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

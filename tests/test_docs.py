"""Every command README.md and docs/*.md show is one a user can run as shown; every link lands.

Which text is a command:

- in a fenced block marked ``bash``, ``sh`` or ``shell``: every line, once lines ending in ``\\``
  are joined and comments (``#`` at the start of a word, outside quotes) and blank lines dropped;
- in any other fenced block (``console``, unmarked, ``yaml``, ...): only lines that start with
  ``$ `` (the prompt is dropped); the rest is output or a file's content;
- in prose and tables: an inline code span that starts with ``curate``, ``dvc``, ``python``,
  ``pytest``, ``pip`` or ``torchrun`` and a space (``curate trace --rev main``).

A line splits into commands at ``&&``, ``||``, ``;``, ``|`` and ``&``; leading ``VAR=value``
assignments and redirections (``>> file``) are dropped. ``<name>`` is a placeholder: it stands
for a value and is checked as nothing (``curate.stages.<stage>``: its package must exist).

What each command must satisfy, by its first word:

- ``curate CMD``: CMD is in :data:`curate.cli.COMMANDS` and ``curate CMD --help`` exits 0 and
  shows every ``-flag`` used: run once per distinct command through the CLI's entry point, all in
  one subprocess (``curate --help`` also through the installed console script, as a user runs
  it). On a page that adds a stage (a fenced block marked ``file=src/curate/stages/NAME.py``, as
  docs/adding-a-stage.md has), ``curate NAME`` takes the options every stage's parser takes.
- ``python -m MODULE``: the module exists; a curate command's module as ``curate CMD`` above;
  ``torch.distributed.run`` as ``torchrun``; any other (``python -m pytest``) as plain shell.
- ``python FILE.py``: the file exists and declares every flag used in an ``add_argument`` call,
  read from its source (a benchmark's ``--help`` imports torch and takes seconds;
  :func:`test_reading_a_script_finds_the_flags_its_help_shows` checks that reading against the
  real ``--help`` of the scripts that start quickly).
- ``torchrun``: its flags are torchrun's (its own parser, read in the ``--help`` subprocess); the
  ``-m`` module exists.
- ``dvc SUB``: SUB (one or two words: ``dvc exp run``) is a subcommand of DVC's own parser, the
  one ``dvc SUB --help`` prints, built once in process, and that subcommand takes every flag used.
- ``pip install -e ".[extra]"``: pyproject.toml declares each extra.
- plain shell (``git``, ``cp``, ``pytest``, ``ruff``, ...; a repo script such as ``.ci/run``):
  every word that looks like a path into the repo's sources exists (its first part is one of
  :data:`SOURCE_ROOTS`, or it is a top-level file such as ``params.yaml``); ``file.py::name``
  also names a function in that file. Data and outputs (``data/``, ``reports/``) are not checked:
  the pipeline makes them.
- any other first word fails the test: give it a rule here, or add it to :data:`PLAIN_SHELL`.

Besides commands: README.md is at most :data:`README_MAX_LINES` lines and shows the exact test
command ``.ci/run`` runs; every relative link in README.md and docs/ points to a file that exists
(and to a heading there, for ``#anchor``); every ``curate.x.y`` name and ``src/...`` path in an
inline code span exists; the map of the code in docs/development.md names what exists.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from curate.cli import COMMANDS, STAGES
from curate.stage import stage_parser
from tests.conftest import REPO

# One worker runs the whole module under xdist: the tools' parsers and the ``--help`` runs are
# cached per process, so splitting the module would pay for them once per worker.
pytestmark = pytest.mark.xdist_group("docs")

README_MAX_LINES = 220
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell"}
INLINE_TOOLS = ("curate", "dvc", "python", "pytest", "pip", "torchrun")
# Folders of the repo's sources: a word starting with one of them must name something that exists.
SOURCE_ROOTS = {"src", "tests", "benchmarks", "scripts", "docs", ".ci", ".github"}
TOP_LEVEL_FILE = re.compile(r"^[\w.-]+\.(yaml|yml|toml|lock|md|cfg)$")
PLAIN_SHELL = {"git", "cp", "ls", "cd", "tail", "export", "pytest", "ruff", "pip"}
# Scripts whose --help starts in about a second: run for real, against what their source declares.
QUICK_HELP = ("benchmarks/dvc_overhead.py", "benchmarks/startup.py", "benchmarks/versioning.py")
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}
REDIRECTS = {">", ">>", "<", "2>", ">&"}
PLACEHOLDER = re.compile(r"<([A-Za-z][\w .-]*)>")
FLAG = re.compile(r"^--?[A-Za-z]")


@dataclass(frozen=True)
class Command:
    where: str  # "docs/review.md:12"
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.words)}"


# Reading the docs ---------------------------------------------------------------------------


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def blocks(text: str) -> tuple[list[tuple[str, int, list[str]]], str]:
    """``([(info string, first line number, lines)], prose)``: the fenced blocks, and the text with
    every fenced line blanked (line numbers kept) for what lies outside them."""
    found, prose, current = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*(```+|~~~+)\s*(.*)$", line)
        if current is None and fence:
            current = (fence.group(1), fence.group(2).strip(), number + 1, [])
            prose.append("")
        elif current is not None and line.strip().startswith(current[0]):
            found.append(current[1:])
            current = None
            prose.append("")
        elif current is not None:
            current[3].append(line)
            prose.append("")
        else:
            prose.append(line)
    assert current is None, f"a fenced block opened on line {current[2] - 1} is never closed"
    return found, "\n".join(prose)


def strip_comment(line: str) -> str:
    """``line`` up to a ``#`` that starts a word outside quotes (as the shell reads a comment)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, command line)`` for every command line shown in ``path`` (module docstring)."""
    fenced, prose = blocks(path.read_text(encoding="utf-8"))
    found = []
    for info, start, lines in fenced:
        info = info.split(" ", 1)[0].lower()
        pending, pending_at = "", 0
        for offset, line in enumerate(lines):
            if info not in SHELL_FENCES:
                if line.startswith("$ "):
                    found.append((start + offset, line[2:]))
                continue
            code = strip_comment(line).rstrip()
            if not pending:
                pending_at = start + offset
            if code.endswith("\\"):
                pending += code[:-1] + " "
                continue
            if (pending + code).strip():
                found.append((pending_at, pending + code))
            pending = ""
    for match in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(match.group(1).split())
        if span.split(" ", 1)[0] in INLINE_TOOLS and " " in span:
            found.append((prose.count("\n", 0, match.start()) + 1, span))
    return found


def split_commands(line: str) -> list[list[str]]:
    """The commands of one shell line, as word lists (operators, redirections, ``VAR=`` dropped)."""
    lexer = shlex.shlex(PLACEHOLDER.sub(r"{\1}", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    commands, words, tokens = [], [], list(lexer)
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif token in OPERATORS:
            commands.append(words)
            words = []
        elif token in REDIRECTS:
            skip = True  # and its target
        elif not words and re.match(r"^[A-Za-z_]\w*=", token):
            continue  # OMP_NUM_THREADS=4 dvc ...
        else:
            words.append(token)
    return [words for words in [*commands, words] if words]


@functools.cache
def commands() -> tuple[Command, ...]:
    found = []
    for path in DOCS:
        for number, line in shell_lines(path):
            for words in split_commands(line):
                found.append(Command(f"{rel(path)}:{number}", tuple(words)))
    return tuple(found)


@functools.cache
def added_stages(doc: str) -> set[str]:
    """The stages a page adds: its fenced blocks that write ``file=src/curate/stages/NAME.py``."""
    fenced, _ = blocks((REPO / doc).read_text(encoding="utf-8"))
    return {
        match.group(1)
        for info, _, _ in fenced
        if (match := re.search(r"file=src/curate/stages/(\w+)\.py", info))
    }


def of_tool(*tools: str) -> list[Command]:
    return [command for command in commands() if command.words[0] in tools]


def is_placeholder(word: str) -> bool:
    """``{stage}``: a ``<stage>`` as the command parser rewrote it; ``<stage>`` in prose."""
    return ("{" in word and "}" in word) or PLACEHOLDER.search(word) is not None


def flags(words: tuple[str, ...] | list[str]) -> list[str]:
    """The options a command line passes (``--drop=x`` as ``--drop``); a lone ``-`` is no option."""
    return [word.split("=")[0] for word in words if FLAG.match(word)]


def shows_flag(help_text: str, flag: str) -> bool:
    return re.search(rf"(^|[\s\[,(]){re.escape(flag)}(?![\w-])", help_text, re.MULTILINE) is not None


# The tools' own parsers ---------------------------------------------------------------------


# ``curate CMD --help`` through the CLI's own entry point for each CMD on the command line, in one
# process: the commands share their imports (pandas, torch), so one start instead of one each. It
# also reads torchrun's options, from torchrun's own parser, while torch is loaded.
HELP_SCRIPT = """
import contextlib, io, json, sys, traceback
from curate.cli import main
found = {}
for name in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*([name] if name else []), "--help"])
        except SystemExit as exc:
            code = exc.code
        except Exception:  # a command that cannot even import: its own failure, not the others'
            traceback.print_exc()
            code = 1
    found[name] = {"returncode": code or 0, "stdout": out.getvalue(), "stderr": err.getvalue()}
from torch.distributed.run import get_args_parser
torchrun = sorted(option for action in get_args_parser()._actions for option in action.option_strings)
print(json.dumps({"help": found, "torchrun": torchrun}))
"""


@dataclass(frozen=True)
class Help:
    returncode: int
    stdout: str
    stderr: str


@functools.cache
def tool_help() -> tuple[dict[str, Help], frozenset[str]]:
    """``curate [CMD] --help`` for the top level and each command the docs use, once each."""
    used = {command.words[1] for command in of_tool("curate") if len(command.words) > 1}
    used |= {curate_command_of(module) for module in run_modules()} - {None}
    wanted = ["", *sorted(name for name in used if name in COMMANDS)]
    result = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, *wanted], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])  # the last line: whatever an import printed before
    return {name: Help(**shown) for name, shown in found["help"].items()}, frozenset(found["torchrun"])


def curate_help() -> dict[str, Help]:
    return tool_help()[0]


def torchrun_flags() -> frozenset[str]:
    return tool_help()[1]


def curate_command_of(module: str) -> str | None:
    return next((name for name, target in COMMANDS.items() if target == module), None)


def run_modules() -> set[str]:
    """Every module a command runs with ``-m`` (``python -m``, ``torchrun ... -m``)."""
    return {
        word
        for command in commands()
        for before, word in zip(command.words, command.words[1:], strict=False)
        if before == "-m"
    }


@functools.cache
def dvc_parser() -> argparse.ArgumentParser:
    from dvc.cli.parser import get_main_parser

    return get_main_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {
        name: sub
        for action in parser._actions  # argparse keeps its subparsers here
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
    }


@functools.cache
def dvc_command(words: tuple[str, ...]) -> tuple[tuple[str, ...], argparse.ArgumentParser] | None:
    """The longest run of ``words`` that names a DVC subcommand, and its parser."""
    parser, path = dvc_parser(), ()
    for word in words:
        sub = subcommands(parser).get(word)
        if sub is None:
            break
        parser, path = sub, (*path, word)
    return (path, parser) if path else None


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def script_flags(path: Path) -> set[str]:
    """The options a script's ``add_argument`` calls declare, read from its source."""
    found = {"-h", "--help"}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            found |= {
                arg.value for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value)[:1] == "-"
            }
    return found


def pyproject_extras() -> set[str]:
    """The keys of pyproject.toml's ``[project.optional-dependencies]`` (no tomllib on Python 3.10)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.MULTILINE))


def module_exists(module: str) -> bool:
    """Whether ``module`` can be run with ``-m``, found without importing it (nor torch)."""
    if is_placeholder(module):
        module = module.split(".{")[0]  # curate.stages.<stage>: the package
    top, *parts = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level find imports nothing
    places = [Path(place) for place in (spec.submodule_search_locations or [])] if spec else []
    if spec is None or (parts and not places):
        return False
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        found = [place for place in places if (place / part / "__init__.py").is_file()]
        if last and any((place / f"{part}.py").is_file() for place in places):
            return True
        if not found:
            return False
        places = [place / part for place in found]
    return True


def repo_path_problem(word: str) -> str | None:
    """Why ``word``, if it names a path into the repo's sources, does not hold; None when it does."""
    if is_placeholder(word) or "://" in word or FLAG.match(word):
        return None
    path, _, name = word.partition("::")
    first = path.split("/", 1)[0]
    if not ((first in SOURCE_ROOTS and "/" in path) or TOP_LEVEL_FILE.match(path)):
        return None
    if not (REPO / path).exists():
        return f"{path} does not exist"
    if name and not re.search(rf"^\s*(async\s+)?def {re.escape(name)}\(", (REPO / path).read_text(), re.M):
        return f"{path} has no function {name}"
    return None


# Commands -----------------------------------------------------------------------------------


def test_the_docs_show_commands_of_every_kind():
    tools = {command.words[0] for command in commands()}
    assert {"curate", "dvc", "python", "pip", "pytest", "git"} <= tools, tools
    assert len(commands()) >= 100, len(commands())


def test_every_command_has_a_rule():
    known = {"curate", "dvc", "python", "torchrun", *PLAIN_SHELL}
    # A first word with a slash is a repo script (.ci/run): test_repo_scripts_run_as_commands_exist.
    unknown = [
        str(command)
        for command in commands()
        if command.words[0] not in known and "/" not in command.words[0]
    ]
    assert not unknown, "commands with no rule in tests/test_docs.py:\n" + "\n".join(unknown)


@pytest.mark.parametrize("command", of_tool("curate"), ids=str)
def test_curate_commands_exist_with_their_options(command):
    name = command.words[1] if len(command.words) > 1 else ""
    if is_placeholder(name):  # curate <stage>
        return
    if FLAG.match(name):
        name = ""
    if name in added_stages(command.where.split(":")[0]) and name not in COMMANDS:
        accepted = option_strings(stage_parser(name, None))  # the parser every stage takes
        for flag in flags(command.words[2:]):
            assert flag in accepted, f"{command}: a stage takes no {flag}"
        return
    assert name == "" or name in COMMANDS, f"{command}: curate has no command {name!r} ({sorted(COMMANDS)})"
    result = curate_help()[name]
    assert result.returncode == 0, f"curate {name} --help: {result.stderr}"
    for flag in flags(command.words[2:] if name else command.words[1:]):
        assert shows_flag(result.stdout, flag), f"{command}: curate {name} takes no {flag}"


def test_curate_help_lists_every_command():
    """``curate --help`` as a user runs it: the installed console script, in a subprocess."""
    script = shutil.which("curate") or pytest.skip("the curate console script is not installed")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: curate"), result
    assert all(name in result.stdout for name in COMMANDS), result.stdout
    assert result.stdout == curate_help()[""].stdout


def test_curate_trace_help_is_what_the_docs_describe():
    trace = curate_help()["trace"]
    assert trace.returncode == 0, trace.stderr
    assert "PATH_OR_SAMPLE_ID" in trace.stdout and shows_flag(trace.stdout, "--rev"), trace.stdout


@pytest.mark.parametrize("command", of_tool("python"), ids=str)
def test_python_commands_name_what_exists_with_its_options(command):
    words = command.words[1:]
    if words[0] == "-m":
        module, options = words[1], words[2:]
        assert module_exists(module), f"{command}: no module {module}"
        if module == "torch.distributed.run":
            check_torchrun(command, options)
        elif name := curate_command_of(module):
            result = curate_help()[name]
            assert result.returncode == 0, f"python -m {module} --help: {result.stderr}"
            for flag in flags(options):
                assert shows_flag(result.stdout, flag), f"{command}: {module} takes no {flag}"
        else:  # python -m pytest tests/...: a tool of its own, as in plain shell
            problems = [problem for word in options if (problem := repo_path_problem(word))]
            assert not problems, f"{command}: {problems}"
        return
    script, options = REPO / words[0], words[1:]
    assert script.is_file(), f"{command}: {words[0]} does not exist"
    declared = script_flags(script)
    for flag in flags(options):
        assert flag in declared, f"{command}: {words[0]} declares no {flag}"


def check_torchrun(command: Command, words: tuple[str, ...]) -> None:
    module = words[words.index("-m") + 1] if "-m" in words else None
    own = words[: words.index("-m")] if module else words
    assert module and module_exists(module), f"{command}: torchrun runs no module that exists"
    for flag in flags(own):
        assert flag in torchrun_flags(), f"{command}: torchrun takes no {flag}"
    if name := curate_command_of(module):
        result = curate_help()[name]
        for flag in flags(words[words.index("-m") + 2 :]):
            assert shows_flag(result.stdout, flag), f"{command}: {module} takes no {flag}"


@pytest.mark.parametrize("command", of_tool("torchrun"), ids=str)
def test_torchrun_commands_run_a_module_with_torchrun_options(command):
    check_torchrun(command, command.words[1:])


@pytest.mark.parametrize("command", of_tool("dvc"), ids=str)
def test_dvc_commands_exist_with_their_options(command):
    words = [word for word in command.words[1:] if not FLAG.match(word)]
    found = dvc_command(tuple(words[:2]))
    assert found, f"{command}: dvc has no such command"
    path, parser = found
    unknown = words[len(path)] if len(words) > len(path) and subcommands(parser) else None  # dvc exp runn
    assert unknown is None, f"{command}: dvc {' '.join(path)} has no subcommand {unknown!r}"
    accepted = option_strings(parser)
    for flag in flags(command.words[1:]):
        assert flag in accepted, f"{command}: dvc {' '.join(path)} takes no {flag}"


@pytest.mark.parametrize("command", of_tool(*PLAIN_SHELL), ids=str)
def test_plain_shell_commands_name_repo_paths_that_exist(command):
    problems = [problem for word in command.words[1:] if (problem := repo_path_problem(word))]
    assert not problems, f"{command}: {problems}"
    if command.words[:2] == ("pip", "install"):
        for word in command.words[2:]:
            if match := re.match(r"^\.\[([\w,-]+)\]$", word):
                missing = set(match.group(1).split(",")) - pyproject_extras()
                assert not missing, f"{command}: pyproject.toml declares no extra {missing}"


def test_repo_scripts_run_as_commands_exist():
    scripts = [command for command in commands() if "/" in command.words[0]]
    assert scripts, "the docs show no repo script (.ci/run, scripts/gpu_check.sh)"
    for command in scripts:
        path = REPO / command.words[0]
        assert path.is_file() and path.stat().st_mode & 0o111, f"{command}: not an executable file"


def test_reading_a_script_finds_the_flags_its_help_shows():
    for script in QUICK_HELP:
        result = subprocess.run(
            [sys.executable, script, "--help"], capture_output=True, text=True, cwd=REPO, timeout=60
        )
        assert result.returncode == 0, f"{script} --help: {result.stderr}"
        options = result.stdout.split("options:", 1)[-1]
        shown = set(re.findall(r"(?:^\s+|,\s)(--?[A-Za-z][\w-]*)", options, re.MULTILINE))
        assert shown == script_flags(REPO / script), script


# The README, links and names -----------------------------------------------------------------


def test_readme_is_read_in_ten_minutes():
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_readme_shows_the_test_command_ci_runs():
    # README.md's "set up and test" line, each of its commands a line of .ci/run, in that order.
    ci = [strip_comment(line).strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    shown = [line.strip() for _, line in shell_lines(REPO / "README.md")]
    (test_command,) = [line for line in shown if re.search(r"&&\s*pytest$", line)]
    steps = [step.strip() for step in test_command.split("&&")]
    assert all(step in ci for step in steps), f".ci/run does not run README.md's {test_command!r}"
    assert [ci.index(step) for step in steps] == sorted(ci.index(step) for step in steps)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = blocks(path.read_text(encoding="utf-8"))
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose, re.MULTILINE):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_relative_links_land(doc):
    _, prose = blocks(doc.read_text(encoding="utf-8"))
    prose = re.sub(r"`[^`]*`", "", prose)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {rel(path)}")
    assert not broken, f"{rel(doc)}: " + "; ".join(broken)


def defines(source: Path, name: str) -> bool:
    pattern = rf"^\s*(class|def|async def)\s+{re.escape(name)}\b|^{re.escape(name)}\s*[:=]"
    return re.search(pattern, source.read_text(encoding="utf-8"), re.MULTILINE) is not None


def dotted_name_exists(name: str) -> bool:
    """``curate.a.b.Name``: the longest prefix that is a module under src/, then a name it defines."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        base = REPO / "src" / Path(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file():
            rest = parts[cut:]
            return not rest or defines(module, rest[0]) or (base / f"{rest[0]}.py").is_file()
    return False


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_code_names_and_source_paths_exist(doc):
    _, prose = blocks(doc.read_text(encoding="utf-8"))
    missing = []
    for span in re.findall(r"`([^`\s]+)`", prose):
        if re.fullmatch(r"curate(\.\w+)+", span.removesuffix("()")):
            if not dotted_name_exists(span.removesuffix("()")):
                missing.append(span)
        elif problem := repo_path_problem(span):
            missing.append(problem)
    assert not missing, f"{rel(doc)}: {missing}"


def test_the_code_map_names_what_exists():
    """Every row of the map names a module or folder of src/curate that exists, every stage module is
    on it, and so is every top-level module and every subpackage (new modules inside a subpackage
    may wait for a row of their own)."""
    text = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    section = text.split("## A map of the code", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([^`]+)` \|(.*)\|$", section, re.MULTILINE)
    assert listed, "docs/development.md: no map of the code"
    package, covered = REPO / "src" / "curate", set()
    for entry, description in listed:
        if entry == "stages/<stage>.py":
            shown = set(re.findall(r"`(\w+)`", description))
            assert shown == set(STAGES), f"the code map's stages {sorted(shown)} are not {sorted(STAGES)}"
            covered |= {"stages"} | {f"stages/{stage}.py" for stage in STAGES}
            continue
        path = package / entry
        assert path.exists(), f"docs/development.md maps src/curate/{entry}, which does not exist"
        covered |= {entry.rstrip("/")} | {entry.split("/", 1)[0]}
    wanted = {path.name for path in package.glob("*.py") if path.name != "__init__.py"}
    wanted |= {path.name for path in package.iterdir() if (path / "__init__.py").is_file()}
    unlisted = sorted(wanted - covered)
    assert not unlisted, f"add these to the map of the code in docs/development.md: {unlisted}"

"""Each stage's code deps in dvc.yaml are exactly the code it runs, so no edit leaves a stale cache.

A stage's closure: its module, every ``curate`` module it imports (at the top or inside a
function, followed through each imported module), the packages' ``__init__.py`` on the way,
and the report templates it renders (with what they extend, import or include).
"""

import ast
import re
from pathlib import Path

import yaml

from tests.conftest import REPO

SRC = REPO / "src"
TEMPLATES = Path("src/curate/report/templates")
TEMPLATE_REFERENCE = re.compile(r"{%-?\s*(?:extends|import|include|from)\s+[\"']([^\"']+)[\"']")


def module_file(name: str) -> Path | None:
    """``curate.report`` -> ``src/curate/report/__init__.py``; None outside the package."""
    if name != "curate" and not name.startswith("curate."):
        return None
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(REPO)
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module name ``path`` imports, anywhere in the file (``from a import b``: a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def rendered_templates(path: Path) -> set[str]:
    """Template names a module renders: string literals that name a file in the templates folder."""
    available = {p.name for p in (REPO / TEMPLATES).iterdir()}
    found = set()
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in available:
            found.add(node.value)
    return found


def template_closure(names: set[str]) -> set[Path]:
    pending, seen = list(names), set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending += TEMPLATE_REFERENCE.findall((REPO / TEMPLATES / name).read_text())
    return {TEMPLATES / name for name in seen}


def closure(module: str) -> set[Path]:
    """The source files and templates that running ``python -m <module>`` can execute or render."""
    files: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]))
            if path is not None and path not in files:
                files.add(path)
                pending += sorted(imported_modules(path))
    stage_templates = set()
    for path in files:
        stage_templates |= rendered_templates(path)
    return files | template_closure(stage_templates)


def stage_closure(module: str) -> set[Path]:
    files = closure(module)
    source = (REPO / module_file(module)).read_text()
    if module.startswith("curate.stages.") and "write_stage(" in source:
        # write_stage(stage, ...) renders <stage>.html and <stage>.md: a computed name.
        stage = module.rsplit(".", 1)[1]
        files |= template_closure({f"{stage}.html", f"{stage}.md"})
    return files


def test_each_stage_depends_on_exactly_the_code_it_runs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        command = stage["cmd"].split()
        assert command[:2] == ["python", "-m"], (
            f"{name}: cmd {stage['cmd']!r} (python -m <module>: no CLI in between)"
        )
        deps = {Path(dep) for dep in stage.get("deps", []) if str(dep).startswith("src/")}
        expected = stage_closure(command[2])
        assert deps == expected, (
            f"dvc.yaml stage {name}: deps to add {sorted(map(str, expected - deps))}, "
            f"to remove {sorted(map(str, deps - expected))}"
        )


def test_closure_follows_imports_inside_functions_and_templates():
    files = stage_closure("curate.stages.gate")
    assert Path("src/curate/__init__.py") in files
    assert Path("src/curate/params.py") in files
    assert TEMPLATES / "index.html" in files and TEMPLATES / "base.html" in files
    assert Path("src/curate/learning/training.py") not in files  # gate trains nothing


def test_lock_records_only_the_stages_of_dvc_yaml():
    # DVC keeps a renamed or removed stage's entry in dvc.lock for ever, and re-parses the whole
    # lock with ruamel's pure-Python round-trip parser once per stage run (benchmarks/README.md:
    # DVC's YAML): a stale entry costs every `dvc repro` time and says something false about the DAG.
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert sorted(locked) == sorted(stages), f"dvc.lock: stale stages {sorted(set(locked) - set(stages))}"

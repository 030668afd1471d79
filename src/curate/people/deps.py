"""``curate deps``: each stage's code deps in ``dvc.yaml``, from what its module imports.

A stage must list as deps exactly the code that can run in it, so that an edit anywhere in
``src/curate`` re-runs the stages it can change and no other. That code is its module, every
``curate`` module it imports (at the top or inside a function, followed through each imported
module), the packages' ``__init__.py`` on the way, and the report templates it renders (with
what they extend, import or include). ``curate deps`` prints what each stage lacks or lists in
excess; ``--write`` puts the right list in ``dvc.yaml``, leaving its other lines as they are.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

import curate
from curate import dag
from curate.errors import CurateError
from curate.stage import guarded

PACKAGE = Path(curate.__file__).resolve().parent
TEMPLATE_FOLDER = PACKAGE / "report" / "templates"
TEMPLATE_REFERENCE = re.compile(r"{%-?\s*(?:extends|import|include|from)\s+[\"']([^\"']+)[\"']")
SOURCE_DEP = re.compile(r"^(\s+)- src/")


def module_file(name: str) -> Path | None:
    """``curate.report`` -> the package's ``report/__init__.py``; None outside the package."""
    if name != "curate" and not name.startswith("curate."):
        return None
    base = PACKAGE.parent.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module name ``path`` imports, anywhere in the file (``from a import b``: a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def rendered_templates(path: Path) -> set[str]:
    """Template names a module renders: string literals that name a file in the templates folder."""
    available = {p.name for p in TEMPLATE_FOLDER.iterdir()}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in available:
            found.add(node.value)
    return found


def template_closure(names: set[str]) -> set[Path]:
    """The templates ``names`` and every template they extend, import or include."""
    pending, seen = [n for n in names if (TEMPLATE_FOLDER / n).is_file()], set()
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending += TEMPLATE_REFERENCE.findall((TEMPLATE_FOLDER / name).read_text(encoding="utf-8"))
    return {TEMPLATE_FOLDER / name for name in seen}


def closure(module: str) -> set[Path]:
    """The source files and templates that running ``python -m <module>`` can execute or render."""
    files: set[Path] = set()
    pending = [module]
    while pending:
        parts = pending.pop().split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]))
            if path is not None and path not in files:
                files.add(path)
                pending += sorted(imported_modules(path))
    templates = set().union(*(rendered_templates(path) for path in files))
    if module.startswith("curate.stages.") and "write_stage(" in module_file(module).read_text():
        # write_stage(STAGE, ...) renders <stage>.html and <stage>.md: a computed name.
        stage = module.rsplit(".", 1)[1]
        templates |= {f"{stage}.html", f"{stage}.md"}
    return files | template_closure(templates)


def expected_deps(module: str, root: Path) -> list[str]:
    """``closure(module)`` as ``dvc.yaml`` writes it: paths relative to the project ``root``."""
    try:
        return sorted(path.relative_to(root).as_posix() for path in closure(module))
    except ValueError:
        raise CurateError(
            f"curate is imported from {PACKAGE}, outside {root}: install this checkout (pip install -e .)"
        ) from None


def listed_deps(stage: dag.DeclaredStage, dvc_file: Path) -> list[str]:
    """The ``src/`` deps the stage's entry lists now."""
    return sorted(d for d in _entry_deps(dvc_file, stage.name) if d.startswith("src/"))


def _entry_deps(dvc_file: Path, name: str) -> list[str]:
    stages = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["stages"]
    return [str(next(iter(d))) if isinstance(d, dict) else str(d) for d in stages[name].get("deps", [])]


def rewrite(text: str, wanted: dict[str, list[str]]) -> str:
    """``dvc.yaml``'s text with each stage's ``src/`` deps replaced by ``wanted[stage]`` (sorted,
    where its first ``src/`` dep was, else first under ``deps:``); every other line kept."""
    out, stage, in_deps = [], None, False
    for line in text.split("\n"):
        if match := re.match(r"^  (\w[\w-]*):\s*$", line):
            stage, in_deps = match.group(1), False
        elif stage in wanted and re.match(r"^    deps:\s*$", line):
            out.append(line)
            out += [f"      - {dep}" for dep in wanted[stage]]
            in_deps = True
            continue
        elif in_deps and SOURCE_DEP.match(line):
            continue
        elif in_deps and not line.startswith("      "):
            in_deps = False
        out.append(line)
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="curate deps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="put the right src/ deps in dvc.yaml")
    parser.add_argument("--dvc-file", default=str(dag.DVC_FILE), help="default: dvc.yaml")
    args = parser.parse_args(argv)
    dvc_file = Path(args.dvc_file)
    root = dvc_file.resolve().parent
    stages = [s for s in dag.stages(dvc_file) if s.module and module_file(s.module)]
    wanted = {s.name: expected_deps(s.module, root) for s in stages}
    wrong = {s.name for s in stages if listed_deps(s, dvc_file) != wanted[s.name]}
    if args.write:
        dvc_file.write_text(rewrite(dvc_file.read_text(encoding="utf-8"), wanted), encoding="utf-8")
        print(f"curate deps: {dvc_file}: rewrote the src/ deps of {', '.join(sorted(wrong)) or 'no stage'}")
        return 0
    for stage in stages:
        listed, expected = set(listed_deps(stage, dvc_file)), set(wanted[stage.name])
        for dep in sorted(expected - listed):
            print(f"{stage.name}: add {dep}")
        for dep in sorted(listed - expected):
            print(f"{stage.name}: remove {dep}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(guarded(main))

"""House rules a reader relies on: arrows between the modules of ``src/curate`` run one way (no
import cycle, imports inside functions included), and no module is too long to read."""

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "src" / "curate"
MAX_LINES = 450
MAX_STAGE_LINES = 350
MAX_TOP_MODULES = 12
# Modules other engineers are still splitting; each leaves this set when it is split.
KNOWN_LONG: set[str] = set()
# The layers, bottom first: a module imports its own layer and those below, never one above.
# The top-level modules (errors, params, stage, ...) are the base every layer may use.
LAYERS = ("", "data", "learning", "curation", "report", "stages", "people", "cli")


def module_name(path: Path) -> str:
    """``src/curate/stages/train.py`` -> ``curate.stages.train``; a package is its ``__init__``'s name."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The ``curate`` modules ``path`` imports anywhere in the file (at the top, inside functions,
    under ``TYPE_CHECKING``): ``from curate import x`` names module ``curate.x``; relative imports
    are resolved from the package of ``name``, the file's module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            module = node.module if node.level == 0 else ".".join(filter(None, [base, node.module]))
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found & known


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports, packages' own ``__init__`` edges left out (a package that
    re-exports nothing imports nothing; a module is not its package's importer)."""
    found = modules()
    known = set(found)
    return {name: imports(path, name, known) - {name, "curate"} for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None: depth-first search, grey = on the stack."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "grey"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "grey":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "black"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_among_curate_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "curate.learning.training" in graph["curate.learning.fold_training"]  # imported inside fold_model
    assert "curate.learning.model_choice" in graph["curate.stages.train"]  # imported inside initial_model
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_relative_imports_resolve_from_the_package(tmp_path):
    (tmp_path / "__init__.py").write_text("from . import a\n")
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n    from .. import top\n")
    known = {"curate.sub", "curate.sub.a", "curate.sub.b", "curate.top"}
    assert imports(tmp_path / "a.py", "curate.sub.a", known) == {"curate.sub.b", "curate.top"}
    # The package itself too (import_graph drops a module's edge to itself).
    assert imports(tmp_path / "__init__.py", "curate.sub", known) == {"curate.sub", "curate.sub.a"}


def layer_of(module: str) -> int:
    """``curate.data.store`` -> the index of ``data`` in :data:`LAYERS`; a top-level module is 0."""
    parts = module.split(".")
    if module == "curate.cli":
        return LAYERS.index("cli")
    return LAYERS.index(parts[1]) if len(parts) > 2 or parts[-1] in LAYERS else 0


def test_no_module_imports_a_layer_above_its_own():
    upward = {
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    }
    assert not upward, sorted(upward)


def test_the_top_of_the_package_stays_small():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} >= set(
        LAYERS[1:-1]
    )


def test_no_module_is_too_long_to_read():
    lengths = {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    limit = {name: MAX_STAGE_LINES if name.startswith("stages/") else MAX_LINES for name in lengths}
    long = {name for name, lines in lengths.items() if lines > limit[name]}
    assert long <= KNOWN_LONG, {name: lengths[name] for name in sorted(long - KNOWN_LONG)}
    assert set(lengths) >= KNOWN_LONG, "KNOWN_LONG names a module that no longer exists"

"""No function in ``src/`` is over 60 lines (from its ``def`` to its last line): a function a
reader cannot see whole does more than one job."""

import ast

from tests.conftest import REPO

MAX_LINES = 60
# Each exemption names its function and says why, and only for code another change is splitting
# right now (none at present).
EXEMPT: set[tuple[str, str]] = set()


def long_functions() -> dict[tuple[str, str], int]:
    """``(file, qualified name) -> lines`` of every function in src/ over :data:`MAX_LINES`."""
    found = {}
    for path in sorted((REPO / "src").rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        found |= {(name, qualified): lines for qualified, lines in _functions(ast.parse(path.read_text()))}
    return {key: lines for key, lines in found.items() if lines > MAX_LINES}


def _functions(node: ast.AST, prefix: str = ""):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            qualified = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield qualified, child.end_lineno - child.lineno + 1
            yield from _functions(child, f"{qualified}.")


def test_no_function_is_over_60_lines():
    over = {key: lines for key, lines in long_functions().items() if key not in EXEMPT}
    assert not over, f"functions over {MAX_LINES} lines: {over}"

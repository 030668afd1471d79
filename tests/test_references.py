"""Every Sphinx-style cross-reference in a docstring or comment under src/ names something that exists.

A docstring that cites a function which was renamed or moved sends a reader to nothing; this
test reads every ``:func:``, ``:class:``, ``:meth:``, ``:mod:``, ``:data:`` and ``:attr:``
reference in ``src/curate`` and resolves it the way a reader would: a dotted name from the top
(``curate.data.image_rows.ImageRows``), else from the citing module's own namespace (``ImageRows``
in a module that defines or imports it), else from the package (``ledger.read_ledger``).
A bare ``:meth:`` name must be a method of some class of the citing module.
"""

import importlib
import inspect
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

SRC = REPO / "src"
REFERENCE = re.compile(r":(func|class|meth|mod|data|attr):`~?([^`]+)`")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def references() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted((SRC / "curate").rglob("*.py")):
        for kind, target in REFERENCE.findall(path.read_text()):
            found.append((module_name(path), kind, target))
    return found


def resolve_dotted(name: str) -> bool:
    """``a.b.c``: import the longest importable prefix, then follow attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def resolve_in(module, name: str) -> bool:
    obj = module
    try:
        for attr in name.split("."):
            obj = getattr(obj, attr)
    except AttributeError:
        return False
    return True


def is_method_of_a_class(module, name: str) -> bool:
    classes = [obj for _, obj in inspect.getmembers(module, inspect.isclass)]
    return any(hasattr(cls, name) for cls in classes)


def resolves(citing: str, kind: str, target: str) -> bool:
    module = importlib.import_module(citing)
    if resolve_in(module, target) or resolve_dotted(target) or resolve_dotted(f"curate.{target}"):
        return True
    return kind == "meth" and "." not in target and is_method_of_a_class(module, target)


def test_the_scan_finds_references():
    assert len(references()) > 50  # the pattern still matches the house's docstrings


@pytest.mark.parametrize(("citing", "kind", "target"), references())
def test_reference_resolves(citing, kind, target):
    assert resolves(citing, kind, target), f"{citing}: :{kind}:`{target}` names nothing that exists"


def test_a_missing_name_is_caught():
    assert not resolves("curate.data.samples", "func", "curate.curation.augmentation.no_such_function")
    assert not resolves("curate.data.samples", "meth", "no_such_method")

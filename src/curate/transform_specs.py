"""The ``torchvision.transforms.v2`` classes and their parameters, read from torchvision's source.

Every stage validates the whole of ``params.yaml`` before any work, and importing torchvision
to check ``augment.transforms`` costs every stage 1-2 s (it imports torch), although only the
augment stage uses them. The v2 package's ``__init__.py`` names its public classes and each
class's ``__init__`` its parameters: enough to catch a misspelt transform or argument name
without importing anything. Argument values are checked when the augment stage builds the
transforms. Where the source cannot be read (an unusual install), the classes are imported.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Signature:
    """What a transform's constructor accepts."""

    parameters: tuple[str, ...]
    required: tuple[str, ...]  # parameters without a default
    any_keyword: bool  # takes **kwargs: any argument name is accepted


@cache
def transform_signatures() -> dict[str, Signature]:
    """Public v2 transform class name -> its constructor's signature."""
    try:
        return _from_source(_v2_folder())
    except (OSError, SyntaxError, LookupError):
        return _from_import()


def _v2_folder() -> Path:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise LookupError("torchvision is not installed")
    return Path(spec.origin).parent / "transforms" / "v2"


def _from_source(folder: Path) -> dict[str, Signature]:
    classes: dict[str, ast.ClassDef] = {}
    for module in sorted(folder.glob("_*.py")):
        for node in ast.parse(module.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, node)
    public = _public_names(folder / "__init__.py")
    found = {
        name: signature
        for name in public
        if name in classes and name != "Transform" and _derives_from_transform(name, classes)
        for signature in [_signature(name, classes)]
        if signature is not None
    }
    if not found:
        raise LookupError(f"no transform classes found in {folder}")
    return found


def _public_names(init: Path) -> list[str]:
    """Names that ``torchvision/transforms/v2/__init__.py`` imports from its private modules."""
    names = []
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and (node.module or "").startswith("_"):
            names += [alias.asname or alias.name for alias in node.names]
    return names


def _base_names(node: ast.ClassDef) -> list[str]:
    return [base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in node.bases]


def _derives_from_transform(name: str, classes: dict[str, ast.ClassDef]) -> bool:
    seen: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        if current == "Transform":
            return True
        if current in seen or current not in classes:
            continue
        seen.add(current)
        pending += _base_names(classes[current])
    return False


def _signature(name: str, classes: dict[str, ast.ClassDef]) -> Signature | None:
    """The ``__init__`` of ``name`` or of its nearest base that defines one (source order of bases)."""
    node = classes.get(name)
    while node is not None:
        init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
        if init is not None:
            return _from_arguments(init.args)
        node = next((classes[base] for base in _base_names(node) if base in classes), None)
    return Signature(parameters=(), required=(), any_keyword=False)


def _from_arguments(args: ast.arguments) -> Signature:
    positional = [*args.posonlyargs, *args.args][1:]  # without self
    n_required = len(positional) - len(args.defaults)
    required = [a.arg for a in positional[:n_required]]
    required += [
        a.arg for a, default in zip(args.kwonlyargs, args.kw_defaults, strict=True) if default is None
    ]
    return Signature(
        parameters=tuple(a.arg for a in [*positional, *args.kwonlyargs]),
        required=tuple(required),
        any_keyword=args.kwarg is not None,
    )


def _from_import() -> dict[str, Signature]:
    from torchvision.transforms import v2  # the slow fallback (imports torch)

    classes = {
        name: obj
        for name, obj in vars(v2).items()
        if not name.startswith("_") and inspect.isclass(obj) and issubclass(obj, v2.Transform)
        and obj is not v2.Transform
    }  # fmt: skip
    signatures = {}
    for name, cls in classes.items():
        params = list(inspect.signature(cls).parameters.values())
        named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        signatures[name] = Signature(
            parameters=tuple(p.name for p in named),
            required=tuple(p.name for p in named if p.default is p.empty),
            any_keyword=any(p.kind == p.VAR_KEYWORD for p in params),
        )
    return signatures


def signature_problem(name: str, args: dict, filled: tuple[str, ...] = ("size",)) -> str | None:
    """Why ``name(**args)`` cannot be called (None when the names fit).

    ``filled`` are parameters the augment stage supplies when left out (``size``: ``image.size``).
    """
    signature = transform_signatures()[name]
    unknown = [key for key in args if key not in signature.parameters]
    if unknown and not signature.any_keyword:
        return (
            f"{name} has no argument {unknown[0]!r} (arguments: {', '.join(signature.parameters) or 'none'})"
        )
    missing = [key for key in signature.required if key not in args and key not in filled]
    if missing:
        return f"{name} needs argument {missing[0]!r}"
    return None

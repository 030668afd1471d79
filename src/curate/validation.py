"""Reading a params file and saying what is wrong in it: one line naming the dotted key at fault.

Apart from :mod:`curate.params` (the sections and the loader) so that each reads on its own:
these helpers know pydantic's error records and YAML's marks, not what the sections mean.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from curate.errors import CurateError


def refuse_unknown(keys: set[str], known: list[str], prefix: str, path: Path) -> None:
    """Stop on the first of ``keys`` (sorted), naming the closest of ``known`` (fields and the
    params that dvc.yaml's stages read alike)."""
    for key in sorted(keys, key=str):
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise CurateError(f"{path}: {prefix}{key}: unknown key{hint}")


def validated(
    model: type[BaseModel],
    raw: Any,
    path: Path,
    prefix: tuple[str, ...] = (),
    moved: Mapping[str, str] | None = None,
) -> Any:
    """``model`` validated from ``raw``, or a :class:`CurateError` naming the first faulty dotted key
    (``prefix``: where ``raw`` sits in the file, for a section validated on its own)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        message = describe_error(errors[0], model, prefix, moved)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CurateError(f"{path}: {message}{more}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a second ``ingest:`` section would silently win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise CurateError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_bytes().decode("utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise CurateError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CurateError(f"{path}: is a folder, not a params file") from None
    except PermissionError:
        raise CurateError(f"{path}: not readable (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise CurateError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    except CurateError as exc:
        raise CurateError(f"{path} {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CurateError(f"{path}: invalid YAML{where}") from None


def dotted(loc: tuple[Any, ...]) -> str:
    """``('augment', 'transforms', 2, 'name')`` -> ``augment.transforms[2].name``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe_error(
    error: dict[str, Any],
    root: type[BaseModel],
    prefix: tuple[str, ...] = (),
    moved: Mapping[str, str] | None = None,
) -> str:
    """One readable line for one pydantic error: the dotted key, what is wrong, what is allowed.

    ``root``: the model validated; ``prefix``: where it sits in the file; ``moved``: keys an older
    file may hold -> where they went.
    """
    moved = moved or {}
    loc = tuple(error["loc"])
    key = dotted(prefix + loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        siblings = list(_fields_at(loc[:-1], root))
        close = difflib.get_close_matches(str(loc[-1]), siblings, n=1, cutoff=0.6)
        hint = f" (did you mean {dotted(prefix + loc[:-1] + (close[0],))}?)" if close else ""
        if key in moved:
            hint = f" (moved to {moved[key]})"
        return f"{key}: unknown key{hint}"
    field = _field_at(loc, root)
    allowed = _allowed(field) if field is not None else ""
    value = error.get("input")
    shown = f"{value!r}" if not isinstance(value, dict) else "a mapping"
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return f"{key}: {shown} is out of range (allowed: {allowed})"
    if kind.startswith("literal"):
        return f"{key}: {shown} is not allowed (allowed: {allowed})"
    if kind == "missing":
        return f"{key}: required key is missing"
    if kind == "value_error":  # our own validators already say what is wrong
        return f"{key}: {error['ctx']['error']}"
    detail = error["msg"][0].lower() + error["msg"][1:]
    suffix = f" (allowed: {allowed})" if allowed else ""
    return f"{key}: {shown}: {detail}{suffix}"


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) and model is not None:
            continue  # an item of a list of sections: the item's section (see below)
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        if getattr(annotation, "__origin__", None) is list:  # list[Section]: walk into the items
            annotation = annotation.__args__[0]
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _fields_at(loc: tuple[Any, ...], root: type[BaseModel]) -> dict[str, FieldInfo]:
    model = _model_at(loc, root)
    return dict(model.model_fields) if model is not None else {}


def _field_at(loc: tuple[Any, ...], root: type[BaseModel]) -> FieldInfo | None:
    keys = [part for part in loc if not isinstance(part, int)]
    if not keys:
        return None
    return _fields_at(tuple(keys[:-1]), root).get(keys[-1])


def _allowed(field: FieldInfo) -> str:
    """The range or choices a field accepts, e.g. ``0 < value <= 1`` or ``'skip', 'fail'``."""
    choices = getattr(field.annotation, "__args__", None)
    if getattr(field.annotation, "__origin__", None) is Literal and choices:
        return ", ".join(repr(choice) for choice in choices)
    low = high = ""
    for rule in field.metadata:
        if getattr(rule, "ge", None) is not None:
            low = f"{rule.ge} <= "
        if getattr(rule, "gt", None) is not None:
            low = f"{rule.gt} < "
        if getattr(rule, "le", None) is not None:
            high = f" <= {rule.le}"
        if getattr(rule, "lt", None) is not None:
            high = f" < {rule.lt}"
    return f"{low}value{high}" if low or high else ""

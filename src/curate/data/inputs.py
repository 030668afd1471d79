"""Reading and checking what an earlier stage wrote: a missing, broken or mismatched input stops
the run with one line that names the file and the stage to re-run (:func:`curate.data.paths.producer_of`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curate.data.paths import producer_of
from curate.errors import CurateError


def read_array(source: str | Path) -> np.ndarray:
    """Load a numeric ``.npy`` written by :func:`curate.data.atomic.write_array` (whole, not
    memory-mapped)."""
    source = Path(source)
    if not source.exists():
        raise CurateError(f"{source}: not found (run the {producer_of(source)} stage first: dvc repro)")
    return np.load(source, allow_pickle=False)


def read_json(source: str | Path) -> Any:
    """A JSON file a stage wrote (a run record, an environment); errors name that stage."""
    source, producer = Path(source), producer_of(source)
    if not source.exists():
        raise CurateError(f"{source}: not found (run the {producer} stage first: dvc repro)")
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CurateError(
            f"{source}: not readable as JSON ({exc}); re-run the {producer} stage (dvc repro)"
        ) from None


def require_columns(
    table: pd.DataFrame | Mapping[str, Any],
    source: str | Path,
    columns: Sequence[str],
    kind: str = "column",
) -> None:
    """Stop with one line naming ``source``, the ``columns`` it lacks and the stage that writes
    them. ``table``: a sample table, or a JSON record (``kind="key"``)."""
    missing = [column for column in columns if column not in table]
    if missing:
        named = ", ".join(map(repr, missing))
        plural = "s" * (len(missing) > 1)
        raise CurateError(
            f"{source}: missing {kind}{plural} {named} (written by the {producer_of(source)} stage: "
            "dvc repro)"
        )


def check_image_shape(source: str | Path, meta: Mapping[str, Any], shape: Sequence[int], what: str) -> None:
    """A network (checkpoint ``source`` with its ``meta``) must take images of ``shape`` (H, W, C);
    ``what`` names them in the error (``the test images are``)."""
    if tuple(shape) != (meta["size"], meta["size"], meta["channels"]):
        raise CurateError(
            f"{source}: built for {meta['size']} px x {meta['channels']} channels, but {what} "
            f"{shape[0]} px x {shape[2]} channels (re-run the {producer_of(source)} stage: dvc repro)"
        )

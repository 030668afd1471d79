"""What ``curate trace`` reads of one revision: each stage's sample table, the out-of-fold
predictions, evaluate's confusion records, and the tables of stages added to ``dvc.yaml``.

:data:`TABLES` and :data:`COLUMNS` say, per stage, which table trace reads and which columns its
section needs (besides the core ones): the one place to change when a stage's table changes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from curate import dag
from curate.data.paths import AUGMENTED_DIR, BALANCED_DIR, CLEAN_DIR, FORMER_PRED_PROBS, PRED_PROBS, RAW_DIR
from curate.data.samples import CORE_COLUMNS, class_names_of
from curate.errors import CurateError
from curate.people.compare import Revision

# What trace reads of each stage, kept together: its table (TABLES) and the columns that table
# must have for the stage's section, besides the core ones (COLUMNS).
TABLES = {
    "ingest": RAW_DIR / "samples.parquet",
    "clean": CLEAN_DIR / "samples.parquet",
    "rebalance": BALANCED_DIR / "samples.parquet",
    "augment": AUGMENTED_DIR / "samples.parquet",
}
COLUMNS = {
    "clean": (
        "given_label", "label_quality", "is_label_issue", "predicted_label", "predicted_confidence",
        "fold", "pred_row", "duplicate_set", "is_outlier", "outlier_score", "action",
    ),
    "rebalance": ("weight", "copies"),
    "augment": ("weight", "copies", "parent_id", "recipe"),
}  # fmt: skip
# The evaluate stage's output, named here rather than imported: trace imports no stage
# (a stage module pulls in its libraries; trace must start without torch).
CONFUSION = Path("reports/plots/confusion.json")
T = TypeVar("T")


@dataclass
class Tables:
    """Everything trace reads from one revision; ``None`` where that revision has no such file."""

    rev: str
    params: dict  # params.yaml, flattened to dotted keys
    frames: dict[str, pd.DataFrame | None]  # stage -> its samples.parquet
    pred_probs: np.ndarray | None
    confusion: list[dict] | None
    # Other stages' Parquet outs in dvc.yaml with a sample_id column (a stage added to the
    # template): (stage, path) -> the table, shown as it is.
    others: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return class_names_of(self.frames["ingest"])


def load_tables(rev: Revision) -> Tables:
    """Read every file trace needs; a file that is there but unreadable or lacks a column stops here."""
    frames = {stage: _load(rev, path, _parquet) for stage, path in TABLES.items()}
    if frames["ingest"] is None:
        raise CurateError(f"{TABLES['ingest']}: not in {rev.name} (dvc repro, or dvc pull)")
    for stage, frame in frames.items():
        needed = (*CORE_COLUMNS, *COLUMNS.get(stage, ()))
        missing = [column for column in needed if frame is not None and column not in frame.columns]
        if missing:
            raise CurateError(f"{TABLES[stage]} ({rev.name}): missing column {missing[0]} (stale: dvc repro)")
    return Tables(
        rev=rev.name,
        params=rev.params(),
        frames=frames,
        pred_probs=_pred_probs(rev),
        confusion=_load(rev, CONFUSION, json.loads),
        others=_other_tables(rev),
    )


def _other_tables(rev: Revision) -> dict[tuple[str, str], pd.DataFrame]:
    """The Parquet outs of dvc.yaml's stages beyond :data:`TABLES` that list samples by id."""
    known = {path.as_posix() for path in TABLES.values()}
    wanted = [(s.name, out) for s in dag.stages() if dag.DVC_FILE.exists() for out in s.outs]
    found = {}
    for stage, out in wanted:
        if out.endswith(".parquet") and out not in known:
            frame = _load(rev, Path(out), _parquet)
            if frame is not None and "sample_id" in frame.columns:
                found[(stage, out)] = frame
    return found


def _pred_probs(rev: Revision) -> np.ndarray | None:
    """The folds stage's predictions; a revision from before ``data/folds/`` has them beside clean's table."""
    found = _load(rev, PRED_PROBS, _npy)
    return found if found is not None else _load(rev, FORMER_PRED_PROBS, _npy)


def _load(rev: Revision, path: Path, decode: Callable[[bytes], T]) -> T | None:
    data = rev.read(path)
    if data is None:
        return None
    try:
        return decode(data)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise CurateError(f"{path} ({rev.name}): unreadable ({exc})") from None


def _parquet(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data))


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)

"""The review queue: the train samples clean flagged, most suspicious first.

Both review tools read it: the static sheet (``curate review``, label issues only) and the
review app (``curate review --serve``, every kind). A flag is one train row of clean's table
with at least one issue kind: ``label`` (cleanlab's label issue), ``duplicate`` (a member of
a near-duplicate set) or ``outlier``. Order: label issues first, lowest label quality first
(the most suspicious are far below 0.001), then the other flags by label quality; ties by
sample_id, so the order is stable across runs.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from curate.data.paths import CLEAN_DIR
from curate.data.samples import read_samples
from curate.errors import CurateError

CLEAN_TABLE = CLEAN_DIR / "samples.parquet"
NEEDED = ("given_label", "label_quality", "is_label_issue", "predicted_label", "action")
KINDS = ("label", "duplicate", "outlier")
KIND_COLUMNS = {"label": "is_label_issue", "duplicate": "is_near_duplicate", "outlier": "is_outlier"}


def load_clean(path: Path = CLEAN_TABLE) -> pd.DataFrame:
    """Clean's table; one line naming the file or column when it is missing or stale."""
    if not path.exists():
        raise CurateError(f"{path}: not found (run the pipeline first: dvc repro)")
    clean = read_samples(path)
    missing = [column for column in NEEDED if column not in clean.columns]
    if missing:
        raise CurateError(f"{path}: missing column {missing[0]} (stale: dvc repro)")
    return clean


def class_names(clean: pd.DataFrame) -> dict[int, str]:
    """Class index -> name, as clean's table pairs them."""
    return dict(zip(clean["label"].astype(int), clean["label_name"].astype(str), strict=True))


def flag_table(clean: pd.DataFrame) -> pd.DataFrame:
    """The flagged train rows of ``clean``, most suspicious first, with the columns people read.

    Adds ``position`` (the row's place in ``clean``, how the app finds its pixels),
    ``given_name``, ``suggested_name`` (the out-of-sample prediction), ``probability`` (its
    predicted probability, NaN when clean did not record it), ``kinds`` (the issue kinds,
    space separated) and ``is_label``.
    A kind column clean did not write counts as no flag of that kind.
    """
    names = class_names(clean)
    flagged = pd.DataFrame(
        {kind: _column(clean, column) for kind, column in KIND_COLUMNS.items()}, index=clean.index
    )
    chosen = (clean["split"] == "train").to_numpy() & flagged.any(axis=1).to_numpy()
    table = clean[chosen].assign(position=np.flatnonzero(chosen))
    kinds = flagged[chosen]
    table = table.assign(
        given_name=table["given_label"].astype(int).map(lambda label: names.get(label, str(label))),
        suggested_name=table["predicted_label"].astype(int).map(lambda label: names.get(label, str(label))),
        probability=table.get("predicted_confidence", pd.Series(np.nan, index=table.index)).astype(float),
        kinds=_kind_text(kinds),
        is_label=kinds["label"].to_numpy(),
    )
    table = table.sort_values(["is_label", "label_quality", "sample_id"], ascending=[False, True, True])
    return table.reset_index(drop=True)


def _kind_text(kinds: pd.DataFrame) -> pd.Series:
    text = pd.Series("", index=kinds.index)
    for kind in KINDS:  # vectorised: the app builds this for 100,000 flags
        text = text + kinds[kind].map({True: f"{kind} ", False: ""})
    return text.str.strip()


def _column(clean: pd.DataFrame, column: str) -> np.ndarray:
    if column not in clean.columns:
        return np.zeros(len(clean), dtype=bool)
    return clean[column].fillna(False).to_numpy(dtype=bool)


def decided_mask(flags: pd.DataFrame, standing: pd.DataFrame) -> np.ndarray:
    """Which flags the ledger's standing lines decide: by sample_id, else by NFC path."""
    by_id = standing["sample_id"] != ""
    ids = set(standing.loc[by_id, "sample_id"])
    paths = {_nfc(path) for path in standing.loc[~by_id, "path"]}
    return (flags["sample_id"].isin(ids) | flags["path"].astype(str).map(_nfc).isin(paths)).to_numpy()


def confirms(decision: str, label: str, given: str) -> bool:
    """A person agrees with a label flag: they dropped it, or relabelled it to another class."""
    return decision == "drop" or (decision == "relabel" and label != given)


def _nfc(path: str) -> str:
    return unicodedata.normalize("NFC", path)  # macOS writes file names decomposed

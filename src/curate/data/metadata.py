"""A source's group, split and extra columns: the fields its shards give each sample, and the
optional ``metadata.csv`` beside the images or shards, joined on the sample's ``path``.

A non-empty cell of metadata.csv overrides the source's own field for that path. Every fault
stops with one line naming the file, line or column: an unknown column (with a did-you-mean), a
path listed twice or matching no sample, a bad split, an empty or header-only file; a sample
without a group where the source has groups stops too, unless ``ingest.unlisted:
default_group`` puts it in ``ingest.default_group``.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from curate.data.csvfile import read_table
from curate.data.samples import CORE_COLUMNS
from curate.errors import CurateError
from curate.params import IngestParams

METADATA_FILE = "metadata.csv"
METADATA_COLUMNS = ("path", "group", "split")
SPLITS = ("train", "test")
DEFAULT_GROUP = "all"  # every sample's group when neither the source nor metadata.csv gives one
# Columns that curate itself writes into the sample tables: an extra metadata column of the
# same name would be overwritten by a later stage, so it is refused up front.
STAGE_COLUMNS = frozenset(CORE_COLUMNS) | {
    *("true_label", "given_label", "predicted_label", "predicted_confidence", "label_quality"),
    *("is_label_issue", "action", "weight", "parent_id", "store", "recipe", "rebalance_group", "pred_row"),
}
SHOWN_PATHS = 3  # paths quoted in a one-line error


class Known(NamedTuple):
    """What a metadata.csv path may name besides a read sample: the skipped ones' paths, and
    how the source's samples are called in a message ("file in the class folders")."""

    skipped: set[str]
    unit: str


def nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def read_metadata(
    path: Path, extra_columns: list[str] | None, given: frozenset[str] = frozenset()
) -> pd.DataFrame:
    """metadata.csv as strings, columns checked; the index is the line number in an editor.
    ``given``: the columns the source's own fields hold (an extra column may come from them);
    ``extra_columns`` None: every column is kept (``curate pack`` carries them into the shards)."""
    table = read_table(path, "a header line such as path,group,split")
    header = list(table.columns)
    if extra_columns is None:
        clash = [name for name in header if name in STAGE_COLUMNS and name not in METADATA_COLUMNS]
        if clash:
            raise CurateError(f"{path}: column {clash[0]!r} is a column curate writes itself; rename it")
    else:
        _check_columns(path, header, extra_columns, given)
    if "path" not in header:
        raise CurateError(f"{path}: missing column 'path'")
    if table.empty:
        raise CurateError(f"{path}: a header and no rows (list one image per line, or delete the file)")
    table["path"] = table["path"].map(nfc)
    return table


def _check_columns(path: Path, header: list[str], extra_columns: list[str], given: frozenset[str]) -> None:
    for name in header:
        if name not in METADATA_COLUMNS and name not in extra_columns:
            close = difflib.get_close_matches(name, METADATA_COLUMNS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(METADATA_COLUMNS)})"
            raise CurateError(
                f"{path}: unknown column {name!r}{hint}; list it in ingest.extra_columns to keep it"
            )
    check_extra_columns(extra_columns)
    for name in extra_columns:
        if name not in header and name not in given:
            raise CurateError(f"{path}: column {name!r} (listed in ingest.extra_columns) is missing")


def check_extra_columns(extra_columns: list[str]) -> None:
    for name in extra_columns:
        if name in STAGE_COLUMNS or name in METADATA_COLUMNS:
            raise CurateError(f"ingest.extra_columns: {name!r} is a column curate writes itself")


def metadata_by_path(
    path: Path,
    known: Collection[str],
    unit: str,
    extra_columns: list[str] | None,
    given: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """metadata.csv read and checked (:func:`read_metadata`; every path unique and one of ``known``,
    a ``unit`` of the source), indexed by path; group and split stripped, split train, test or ''."""
    metadata = read_metadata(path, extra_columns, given)
    _check_metadata_paths(metadata, path, known, unit)
    if "split" in metadata.columns:
        split = metadata["split"].str.strip()
        bad = split[~split.isin([*SPLITS, ""])]
        if len(bad):
            raise CurateError(f"{path} line {bad.index[0]}: split {bad.iloc[0]!r} is not 'train' or 'test'")
        metadata["split"] = split
    if "group" in metadata.columns:
        metadata["group"] = metadata["group"].str.strip()
    return metadata.set_index("path")


def apply_metadata(
    samples: pd.DataFrame, given: pd.DataFrame, metadata_path: Path, settings: IngestParams, known: Known
) -> tuple[pd.DataFrame, int]:
    """``group``, ``split`` and the extra columns of ``samples`` (in path order): the source's own
    fields ``given`` (aligned with ``samples``, '' where a sample has none), then metadata.csv's
    non-empty cells over them, joined on ``path``; ``group`` and ``split`` defaults filled
    (``split`` '' where the keyed split decides). Also how many samples went to
    ``ingest.default_group``."""
    samples = samples.assign(group="", split="")
    for column in given.columns:
        samples[column] = given[column].to_numpy()
    has_groups = "group" in given.columns
    check_extra_columns(settings.extra_columns)
    if metadata_path.exists():
        by_path = metadata_by_path(
            metadata_path,
            pd.concat([samples["path"], pd.Series(sorted(known.skipped), dtype=object)]),
            known.unit,
            settings.extra_columns,
            frozenset(given.columns),
        )
        has_groups |= "group" in by_path.columns
        for column in by_path.columns:
            cell = samples["path"].map(by_path[column]).fillna("")
            samples[column] = cell.where(cell != "", samples.get(column, ""))
    else:
        missing = [name for name in settings.extra_columns if name not in given.columns]
        if missing:
            raise CurateError(f"{metadata_path}: not found, but ingest.extra_columns lists {missing[0]!r}")
    if has_groups:
        return _fill_unlisted(samples, metadata_path, settings)
    return samples.assign(group=DEFAULT_GROUP), 0


def _check_metadata_paths(metadata: pd.DataFrame, path: Path, known: Collection[str], unit: str) -> None:
    """Every listed path is unique and names a sample of the source (read, or skipped with a reason)."""
    empty = metadata[metadata["path"].str.strip() == ""]
    if len(empty):
        raise CurateError(f"{path} line {empty.index[0]}: empty path")
    duplicated = metadata["path"][metadata["path"].duplicated()]
    if len(duplicated):
        raise CurateError(f"{path}: path {duplicated.iloc[0]!r} is listed twice")
    unknown = metadata[~metadata["path"].isin(known)]
    if len(unknown):
        line, relative = unknown.index[0], unknown["path"].iloc[0]
        raise CurateError(f"{path} line {line}: path {relative!r} matches no {unit}")


def _fill_unlisted(samples: pd.DataFrame, path: Path, settings: IngestParams) -> tuple[pd.DataFrame, int]:
    """Images without a group (missing from metadata.csv and from the source's fields, or
    given an empty one): stop, or default_group."""
    unlisted = samples["group"] == ""
    if not unlisted.any():
        return samples, 0
    if settings.unlisted == "error":
        shown = samples["path"][unlisted].head(SHOWN_PATHS).tolist() + (
            ["..."] if unlisted.sum() > SHOWN_PATHS else []
        )
        raise CurateError(
            f"{path}: {unlisted.sum()} image(s) not listed (or with an empty group): {', '.join(shown)}; "
            "list them, or set ingest.unlisted: default_group"
        )
    if settings.default_group in set(samples["group"]):
        raise CurateError(
            f"ingest.default_group: {settings.default_group!r} is also a group in {path}; choose another name"
        )
    samples.loc[unlisted, "group"] = settings.default_group
    return samples, int(unlisted.sum())

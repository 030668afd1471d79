"""A source folder's form (an ImageFolder, WebDataset tar shards or Parquet shards), and the
catalog of a sharded one.

Layout of a sharded source::

    <source>/*.tar | <source>/*.parquet   the shards, in one folder (not both kinds, no subfolders)
    <source>/classes.txt                  tar shards, optional: class names, one a line (line i: .cls i)
    <source>/metadata.csv                 optional: path (the sample's path), group, split, extra columns

Each shard is listed in a worker of the ``ingest.workers`` pool (:func:`curate.data.tars.index_tar`,
:func:`curate.data.parquet_shards.index_parquet`) into compact arrays: the sample's path, the
image's place in its shard and its label and fields. The main process checks the keys (unique
across shards) and the labels, then :func:`curate.data.catalog.read_catalog` reads the images by
their place, in store-key order, through the same pool: the store and the table are the ones the
same images give as an ImageFolder, byte for byte, whatever the shards' order, sizes or number.

Why read by place rather than decode each shard into a temporary store and merge: a tar member
is one ``pread`` at a known offset, so a worker reads exactly the next images in key order and
nothing is written twice (a merge would write and read every decoded pixel once more, 3 GB at
1M 32 px RGB images, and hold a run per shard open); the tasks in flight bound memory as for
loose files, and the order of the results, not the shards, decides the output, so one worker and
two give the same bytes. A Parquet row is read with its row group, which the worker keeps for
the rows after it (:class:`curate.data.parquet_shards.ParquetPayloads`): rows whose file order
follows the key order, as ``datasets`` writes a sorted folder, read each group about once.

Class names: tar shards' ``classes.txt`` (a ``.cls`` or integer label indexes it, a string label
must be in it), Parquet's ``ClassLabel`` names (every file the same); without them, the labels
themselves, sorted (as numbers when every label is an integer).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from curate.data.catalog import Catalog, Skipped, SourceData, read_catalog
from curate.data.decoding import Payloads, map_in_order, worker_count
from curate.data.folder import visible
from curate.data.metadata import nfc
from curate.data.parquet_shards import ParquetPayloads, index_parquet
from curate.data.tars import ShardIndex, TarPayloads, index_tar, split_key
from curate.errors import CurateError
from curate.params import ImageParams, IngestParams

FOLDER, WEBDATASET, PARQUET = "folder", "webdataset", "parquet"
SUFFIX = {WEBDATASET: ".tar", PARQUET: ".parquet"}
KINDS = {FOLDER: "class subfolders", WEBDATASET: "tar shards", PARQUET: "Parquet shards"}
COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst")
CLASSES_FILE = "classes.txt"


def source_form(source: Path) -> str:
    """What ``source`` holds: class subfolders, tar shards or Parquet shards; one line when it
    holds more than one of them (or compressed tars)."""
    if not source.is_dir():
        raise CurateError(f"ingest.source: {str(source)!r} is not a folder")
    entries = visible(source)
    compressed = [path for path in entries if path.name.lower().endswith(COMPRESSED)]
    if compressed:
        raise CurateError(
            f"{compressed[0]}: a compressed tar; ingest reads plain .tar shards (decompress it)"
        )
    found = {
        FOLDER: [path for path in entries if path.is_dir()],
        **{form: _shard_files(entries, form) for form in SUFFIX},
    }
    present = [form for form, paths in found.items() if paths]
    if len(present) > 1:
        shown = " and ".join(f"{KINDS[form]} ({found[form][0].name})" for form in present)
        raise CurateError(f"{source}: holds {shown}; keep one form of source per folder")
    return present[0] if present else FOLDER


def read_shards(
    source: Path, form: str, image: ImageParams, settings: IngestParams, seed: int, target: Path
) -> SourceData:
    """Read the shards of ``source`` into the pixel store ``target`` and a sample table."""
    shards = _shard_files(visible(source), form)
    columns = ("group", "split", *settings.extra_columns)
    indexer = functools.partial(index_tar if form == WEBDATASET else index_parquet, columns=columns)
    listed = map_in_order(indexer, shards, worker_count(settings.workers))
    indexes = list(tqdm(listed, total=len(shards), desc="ingest: listing shards", unit="shard", disable=None))
    names = _classes_file(source) if form == WEBDATASET else _declared_names(shards, indexes)
    shard_of = np.repeat(np.arange(len(shards)), [len(index.paths) for index in indexes])
    locators = np.concatenate([np.frombuffer(index.locators, dtype=np.int64) for index in indexes])
    locators = locators.reshape(-1, 2)
    payloads: Payloads = (
        TarPayloads(shards, shard_of, locators)
        if form == WEBDATASET
        else ParquetPayloads(shards, [index.image_column for index in indexes], shard_of, locators)
    )
    catalog = _catalog(source, shards, indexes, names, payloads, shard_of, keyed=form == WEBDATASET)
    del indexes  # the catalog's arrays hold what the workers listed: the per-shard lists can go
    if len(catalog.class_names) < 2:
        shown = ", ".join(map(repr, catalog.class_names)) or "none"
        raise CurateError(f"{source}: classes {shown}; a classifier needs two or more")
    origin = "the labels" if names is None else CLASSES_FILE if form == WEBDATASET else "the ClassLabel names"

    def check(present: set[str], skipped: list[Skipped]) -> None:
        for name in catalog.class_names:
            if name not in present:
                raise CurateError(f"{source}: class {name!r} (from {origin}) has no readable image")

    return read_catalog(catalog, image, settings, seed, target, check)


def _classes_file(source: Path) -> list[str] | None:
    """``classes.txt``: one class name a line, line ``i`` the name of class index ``i``; None when absent."""
    path = source / CLASSES_FILE
    if not path.exists():
        return None
    try:
        lines = [nfc(line.strip()) for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CurateError(f"{path}: not readable as UTF-8 text ({exc})".splitlines()[0]) from None
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise CurateError(f"{path} line {lines.index('') + 1}: an empty class name")
    twice = [name for i, name in enumerate(lines) if name in lines[:i]]
    if twice:
        raise CurateError(f"{path}: class {twice[0]!r} is named twice")
    return lines


def _declared_names(shards: list[Path], indexes: list[ShardIndex]) -> list[str] | None:
    """The ClassLabel names every Parquet file declares (all the same), or None."""
    declared = {tuple(index.names) for index in indexes if index.names is not None}
    if len(declared) > 1 or (declared and any(index.names is None for index in indexes)):
        first = next(i for i, index in enumerate(indexes) if index.names != indexes[0].names)
        raise CurateError(f"{shards[first]}: its class names differ from {shards[0].name}'s")
    return list(declared.pop()) if declared else None


def _catalog(
    source: Path,
    shards: list[Path],
    indexes: list[ShardIndex],
    names: list[str] | None,
    payloads: Payloads,
    shard_of: np.ndarray,
    keyed: bool,
) -> Catalog:
    """The shards' samples in one catalog; a key twice across shards (``keyed``: WebDataset's key
    of the path, else the path), a label outside the class names, stop with one line naming the
    shard and the sample."""
    counts = [len(index.paths) for index in indexes]
    paths = np.array([path for index in indexes for path in index.paths], dtype=object)
    keys = pd.Series([(split_key(path) or (path,))[0] for path in paths] if keyed else paths)
    twice = keys[keys.duplicated(keep=False)]
    if len(twice):
        first, second = twice.index[0], twice.index[twice == twice.iloc[0]][1]
        raise CurateError(
            f"{source}: key {twice.iloc[0]!r} twice: {shards[shard_of[first]].name}: {paths[first]} "
            f"and {shards[shard_of[second]].name}: {paths[second]}"
        )
    class_names = names if names is not None else _label_names(indexes)
    code = {name: i for i, name in enumerate(class_names)}
    labels = np.empty(len(paths), dtype=np.int64)
    at = 0
    for shard, index in zip(shards, indexes, strict=True):
        lookup = {value: _code(value, code, names) for value in set(index.labels)}
        for value, found in lookup.items():
            if found is None:
                sample = index.paths[index.labels.index(value)]
                limit = f"classes 0..{len(names) - 1}" if names is not None else "a class index >= 0"
                raise CurateError(f"{shard}: {sample}: label {value!r} is not one of {limit} or their names")
        labels[at : at + len(index.paths)] = [lookup[value] for value in index.labels]
        at += len(index.paths)
    return Catalog(
        source=source,
        paths=paths,
        labels=labels,
        class_names=class_names,
        payloads=payloads,
        fields=_fields(indexes, counts),
        skipped=sorted([entry for index in indexes for entry in index.skipped], key=_path_parts),
        unit="sample in the shards",
        shards=shards,
        shard_of=shard_of,
    )


def _fields(indexes: list[ShardIndex], counts: list[int]) -> pd.DataFrame:
    """The columns some shard gives, '' for the samples of a shard without them (categorical: a
    million rows of a few values cost a byte or two each)."""
    columns = sorted({column for index in indexes for column in index.fields})
    frame = pd.DataFrame(index=range(sum(counts)))
    for column in columns:
        parts = (index.fields.get(column, [""] * n) for index, n in zip(indexes, counts, strict=True))
        frame[column] = pd.Categorical([cell for part in parts for cell in part])
    return frame


def _path_parts(entry: Skipped) -> list[str]:
    return entry.path.split("/")


def _shard_files(entries: list[Path], form: str) -> list[Path]:
    return [path for path in entries if path.is_file() and path.name.lower().endswith(SUFFIX[form])]


def _label_names(indexes: list[ShardIndex]) -> list[str]:
    """Class names from the labels themselves: sorted, as numbers when every label is an integer."""
    values = {value for index in indexes for value in set(index.labels)}
    if all(isinstance(value, int) for value in values):
        return [str(value) for value in sorted(value for value in values if value >= 0)]
    return sorted({nfc(str(value)) for value in values})


def _code(value: Any, code: dict[str, int], names: list[str] | None) -> int | None:
    """A label's class index: an integer indexes ``names`` (or is its own name), a string is a name."""
    if isinstance(value, int):
        if value < 0 or (names is not None and value >= len(names)):
            return None
        return value if names is not None else code.get(str(value))
    return code.get(nfc(value))

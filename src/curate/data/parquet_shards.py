"""Parquet shards as Hugging Face ``datasets`` writes an image data set: the samples of one
file, and reading a row's image bytes.

The image column is the one whose feature (the ``huggingface`` key of the file's schema
metadata) is ``Image``, else the column named ``image``: a ``{bytes, path}`` struct or plain
binary. The label column is the ``ClassLabel`` one (the one named ``label`` when there are
several), else the column named ``label``: a ``ClassLabel``'s names are the class names and its
integers index them; a plain column holds class indices or names. A sample's path is the
struct's ``path`` (``datasets`` keeps the image's file name there), or ``<file stem>/<row>``
where it has none. The split is the file's ``split`` column, else its name's first word:
``train-*`` train, ``test-*`` test, ``validation-*`` test (held out from training as the test
split is: the pipeline validates by K-fold within train and has no third split). ``group`` and
the columns of ``ingest.extra_columns`` are read where the file has them.

A row is read with its row group (``datasets`` writes 100 images per group): a worker keeps the
last few groups it read, so rows read in key order that follow the file's order read each group
about once per worker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.data.metadata import nfc
from curate.data.tars import ShardIndex, check_split, inside, text
from curate.errors import CurateError

FILE_SPLIT = re.compile(r"^(train|test|validation)[-_.]")
SPLIT_OF_FILE = {"train": "train", "test": "test", "validation": "test"}
CACHED_GROUPS = 4  # row groups a reading process keeps (least recently used dropped first)
OPEN_FILES = 16


def _features(path: Path, schema: pa.Schema) -> dict[str, Any]:
    """The ``datasets`` features of a file (column -> feature), or {} for another writer's file."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return {}
    try:
        return json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        raise CurateError(f"{path}: unreadable 'huggingface' schema metadata") from None


def _type(spec: Any) -> str | None:
    return spec.get("_type") if isinstance(spec, dict) else None


def _column(path: Path, schema: pa.Schema, features: dict[str, Any], feature: str, name: str) -> str:
    """The column of a ``datasets`` feature type (the one called ``name`` among several), else
    the column called ``name``."""
    typed = [
        column for column, spec in features.items() if isinstance(spec, dict) and spec.get("_type") == feature
    ]
    if len(typed) == 1 or name in typed:
        return typed[0] if len(typed) == 1 else name
    if name in schema.names:
        return name
    what = f"a {feature} feature, or a column named {name!r}"
    raise CurateError(f"{path}: no {name} column ({what}); columns: {', '.join(schema.names)}")


def _image_field(path: Path, schema: pa.Schema, column: str) -> bool:
    """Whether the image column is a ``{bytes, path}`` struct (else plain binary)."""
    kind = schema.field(column).type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        return True
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return False
    raise CurateError(f"{path}: image column {column!r} holds {kind}, not image bytes")


def index_parquet(path: Path, columns: tuple[str, ...]) -> ShardIndex:
    """The samples of one Parquet file: each row's path, label and ``columns``."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise CurateError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    schema = parquet.schema_arrow
    features = _features(path, schema)
    image = _column(path, schema, features, "Image", "image")
    label = _column(path, schema, features, "ClassLabel", "label")
    struct = _image_field(path, schema, image)
    has_path = struct and schema.field(image).type.get_field_index("path") >= 0
    given = [column for column in columns if column in schema.names]
    read = [label, *given, *([f"{image}.path"] if has_path else [])]
    table = parquet.read(columns=read)
    if table.num_rows == 0:
        raise CurateError(f"{path}: an empty shard (no row)")
    names = features.get(label, {}).get("names")
    index = ShardIndex(names=[nfc(str(name)) for name in names] if names is not None else None)
    index.image_column = (image, struct)
    labels = table.column(label).to_pylist()
    paths = (
        table.column(image).combine_chunks().field("path").to_pylist() if has_path else [None] * len(labels)
    )
    cells = {column: [text(value) for value in table.column(column).to_pylist()] for column in given}
    split = FILE_SPLIT.match(path.name)
    if "split" not in cells and split:
        cells["split"] = [SPLIT_OF_FILE[split.group(1)]] * len(labels)
    sizes = [parquet.metadata.row_group(group).num_rows for group in range(parquet.num_row_groups)]
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    row_in = np.arange(len(labels)) - np.repeat(np.cumsum([0, *sizes[:-1]]), sizes)
    for row, (value, member) in enumerate(zip(labels, paths, strict=True)):
        where = f"{path}: row {row}"
        if value is None or isinstance(value, bool) or not isinstance(value, int | str):
            raise CurateError(f"{where}: label {value!r} is neither a class name nor a class index")
        name = inside(path, nfc(member)) if member else f"{path.stem}/{row:07d}"
        values = {column: column_cells[row] for column, column_cells in cells.items()}
        check_split(values, f"{path}: {name}")
        index.add(name, (int(group_of[row]), int(row_in[row])), value, values)
    return index


@dataclass
class ParquetPayloads:
    """Images in Parquet files: entry ``i`` is row ``locators[i, 1]`` of row group
    ``locators[i, 0]`` of ``files[shard_of[i]]``; files and row groups opened lazily per process."""

    files: list[Path]
    columns: list[tuple[str, bool]]  # per file: the image column, and whether it is a struct
    shard_of: np.ndarray  # (N,) int
    locators: np.ndarray  # (N, 2) int64: row group, row within it
    _groups: dict[tuple[int, int], pa.Array] = field(default_factory=dict, repr=False)
    _open: dict[int, pq.ParquetFile] = field(default_factory=dict, repr=False)

    def read(self, entry: int) -> bytes:
        shard, (group, row) = int(self.shard_of[entry]), (int(n) for n in self.locators[entry])
        value = self._group(shard, group)[row].as_py()
        if value is None:
            raise ValueError("no image bytes in the row (it names a file outside the shard)")
        return value

    def _group(self, shard: int, group: int) -> pa.Array:
        key = (shard, group)
        if key in self._groups:
            self._groups[key] = self._groups.pop(key)
            return self._groups[key]
        if len(self._groups) >= CACHED_GROUPS:
            del self._groups[next(iter(self._groups))]
        column, struct = self.columns[shard]
        if shard not in self._open:
            if len(self._open) >= OPEN_FILES:
                self._open.pop(next(iter(self._open))).close()
            self._open[shard] = pq.ParquetFile(self.files[shard])
        table = self._open[shard].read_row_group(group, columns=[f"{column}.bytes" if struct else column])
        values = table.column(0).combine_chunks()
        self._groups[key] = values.field("bytes") if struct else values
        return self._groups[key]

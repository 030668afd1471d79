"""The pixel stores as the stages use them: write one, open one, and read a sample table's images
from the stores its rows point into (:class:`ImageRows`).

A store (:mod:`curate.data.store`) holds uint8 ``N x H x W x C`` rows in immutable,
content-named segments plus ``index.json``, written once, memory-mapped on read. A sample table's
``row`` is a row of the store its ``store`` column names (:data:`curate.data.paths.IMAGE_STORES`);
a table without that column points into the raw store. :func:`store_files` lists the stores a
table's rows point into: what a stage notes in its :class:`curate.data.lineage.Lineage`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curate.data.paths import IMAGE_STORES, producer_of
from curate.data.store import Store, StoreWriter, target_rows, write_store
from curate.errors import CurateError


def write_images(
    target: str | Path,
    images: np.ndarray,
    cut_keys: Sequence[str] | None = None,
    order: np.ndarray | None = None,
    segment_mb: float = 64,
) -> np.ndarray:
    """Store an ``N x H x W x C`` uint8 array as a pixel store (:mod:`curate.data.store`), rows in
    ``order`` (default: the array's), segments cut by ``cut_keys`` (default: the positions);
    each image's global row in the store."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 N x H x W x C, got {images.dtype} {images.shape}")
    cut_keys = [str(i) for i in range(len(images))] if cut_keys is None else list(cut_keys)
    order = np.arange(len(images)) if order is None else order
    return write_store(target, images, order, cut_keys, target_rows(segment_mb, images.shape[1:]))


@contextlib.contextmanager
def store_writer(target: str | Path, row_shape: tuple[int, ...], segment_mb: float) -> Iterator[StoreWriter]:
    """A :class:`curate.data.store.StoreWriter` for streaming rows in key order; published on success."""
    writer = StoreWriter(target, row_shape, target_rows(segment_mb, row_shape))
    try:
        yield writer
        writer.close()
    finally:
        writer.abort()


def read_images(source: str | Path) -> Store:
    """Open a pixel store (memory-mapped, read-only): stages touch only the rows they need."""
    images = Store(source, producer_of(source))
    return images


class ImageRows:
    """The images of a sample table, read on demand from the stores its rows point into.

    What the training stages hand to :func:`curate.learning.training.fit` and
    :func:`curate.learning.inference.predict`
    instead of a gathered copy: ``len``, ``shape`` and ``nbytes`` as an array would have them;
    an int index reads one image; a slice or an index array gives another :class:`ImageRows`
    over those rows (nothing read yet); :meth:`read` and ``np.asarray`` read rows in order,
    each store's rows in sorted order (a memory-map then reads its pages in sequence).
    """

    def __init__(self, stores: dict[str, Store], store_of: np.ndarray, rows: np.ndarray) -> None:
        self.stores = stores  # store name -> opened store
        self.names = sorted(stores)
        self.store_of = store_of  # (N,) index into names
        self.rows = rows  # (N,) row in that store
        shapes = {stores[name].shape[1:] for name in self.names}
        if len(shapes) > 1:
            names = ", ".join(self.names)
            raise CurateError(f"image stores {names} hold images of different shapes {sorted(shapes)}")
        self.shape = (len(rows), *shapes.pop())
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, key: int | slice | np.ndarray) -> Any:
        if isinstance(key, int | np.integer):
            return self.read(np.array([key]))[0]
        return ImageRows(self.stores, self.store_of[key], self.rows[key])

    def read(self, index: np.ndarray | None = None) -> np.ndarray:
        """The images at positions ``index`` (all when None), in that order, as a new uint8 array."""
        store_of = self.store_of if index is None else self.store_of[index]
        rows = self.rows if index is None else self.rows[index]
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        for code, name in enumerate(self.names):
            at = np.flatnonzero(store_of == code)
            out[at] = self.stores[name].take(rows[at])
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        images = self.read()
        return images if dtype is None else images.astype(dtype, copy=False)


def image_rows(samples: pd.DataFrame, stores: dict[str, Path] | None = None) -> ImageRows:
    """:class:`ImageRows` of ``samples`` in table order (``.read()`` for a copy of them all).

    Opens (memory-maps) only the stores the rows point into, the raw one when there are none.
    """
    stores = IMAGE_STORES if stores is None else stores
    store_of_row = _store_of_row(samples)
    used = _used_stores(store_of_row)
    codes = store_of_row.map({name: code for code, name in enumerate(used)}).to_numpy(dtype=np.int64)
    opened = {name: read_images(stores[name]) for name in used}
    return ImageRows(opened, codes, samples["row"].to_numpy(dtype=np.int64))


def store_files(samples: pd.DataFrame, stores: dict[str, Path] | None = None) -> list[Path]:
    """The store files :func:`image_rows` opens for ``samples``: what a stage notes as its inputs."""
    stores = IMAGE_STORES if stores is None else stores
    return [stores[name] for name in _used_stores(_store_of_row(samples))]


def _store_of_row(samples: pd.DataFrame) -> pd.Series:
    """Each row's store name; a table without a ``store`` column points into the raw store."""
    return samples["store"] if "store" in samples.columns else pd.Series("raw", index=samples.index)


def _used_stores(store_of_row: pd.Series) -> list[str]:
    return sorted(store_of_row.unique()) or ["raw"]

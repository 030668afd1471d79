"""The on-disk data contract shared by every stage.

* ``images/``: a pixel store (:mod:`curate.data.store`): uint8 ``N x H x W x C`` rows in immutable,
  content-named segments plus ``index.json``, written once, memory-mapped on read.
* ``samples.parquet``: one row per sample. Core columns (see :data:`CORE_COLUMNS`):

  - ``sample_id``: a content hash of the source bytes, so a file moved to
    another class folder keeps its id (and shows up as relabelled); identical
    bytes in two files get ``-1``, ``-2`` suffixes in path order, so ids stay unique;
  - ``path``: the source file relative to the source folder (``mnist/00042`` for the demo);
  - ``row``: the sample's global row in its store (segments in index order);
  - ``label`` (int, index into the sorted class names), ``label_name``, ``group``,
    ``split`` (``train`` | ``test``).

  Stages add their own columns (``label_quality``, ``action``, ``weight``, ...)
  and pass tables on, never copies of images.

Every write goes to a temp file in the target folder, then ``os.replace``:
a killed stage leaves the old file or the new one, never half of one.

Readers and writers keep no record of what they touched: a stage names each file it reads
and writes to its :class:`curate.data.lineage.Lineage` (:func:`store_files` lists the image stores a
table's rows point into).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curate.data.store import Store, StoreWriter, target_rows, write_store
from curate.errors import CurateError

CORE_COLUMNS = ("sample_id", "path", "row", "label", "label_name", "group", "split")

RAW_DIR = Path("data/raw")
CLEAN_DIR = Path("data/clean")
BALANCED_DIR = Path("data/balanced")
AUGMENTED_DIR = Path("data/augmented")
MODELS_DIR = Path("models")
RAW_SAMPLES = RAW_DIR / "samples.parquet"
RAW_IMAGES = RAW_DIR / "images"
REPORTS_DIR = Path("reports")
# What the folds stage leaves beside clean's table for clean, augment and trace: the out-of-sample
# predictions (train rows in table order), each row's fold, the shared embedder and its embeddings,
# and what computed them.
PRED_PROBS = CLEAN_DIR / "pred_probs.npy"
FOLD_OF_ROW = CLEAN_DIR / "folds.npy"
EMBEDDINGS = CLEAN_DIR / "embeddings.npy"
EMBEDDER = CLEAN_DIR / "embedder.pt"
ENVIRONMENT = CLEAN_DIR / "environment.json"
# Which store a row's ``row`` points into: the ``store`` column names it;
# tables without the column point into the raw store.
IMAGE_STORES = {"raw": RAW_IMAGES, "augmented": AUGMENTED_DIR / "images"}
# What the train stage writes: the trained classifier and its run record (what train_report reports).
MODEL = MODELS_DIR / "model.pt"
RUN_RECORD = MODELS_DIR / "train.json"
# The stage that writes each data file or folder: what a missing or broken file's message says
# to run. A file named here wins over its folder (folds writes beside clean's table).
PRODUCERS = {
    RAW_DIR: "ingest",
    **dict.fromkeys((PRED_PROBS, FOLD_OF_ROW, EMBEDDINGS, EMBEDDER, ENVIRONMENT), "folds"),
    CLEAN_DIR: "clean",
    BALANCED_DIR: "rebalance",
    AUGMENTED_DIR: "augment",
    **dict.fromkeys((MODEL, RUN_RECORD), "train"),
}


def _remove_stale_temps(target: Path) -> None:
    """Delete ``target``'s temp files left by a killed run: ``.{name}.<random>.tmp`` beside it.

    Only this target's own pattern (the random part has no dot, so ``.a.b.x.tmp`` of a
    target ``a.b`` is not ``a``'s). No live writer can own one: DVC runs one stage at a
    time in a workspace (it holds the repo lock) and each output has one writer stage.
    """
    prefix = f".{target.name}."
    for leftover in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        if "." not in leftover.name[len(prefix) : -len(".tmp")]:
            leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it over ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600 files; give outputs the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


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


def write_array(target: str | Path, array: np.ndarray) -> None:
    """Store any numeric array as ``.npy`` (predicted probabilities, embeddings)."""
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def read_array(source: str | Path) -> np.ndarray:
    """Load a numeric ``.npy`` written by :func:`write_array` (whole, not memory-mapped)."""
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


def producer_of(path: str | Path) -> str:
    """The stage that writes ``path`` (a file named in :data:`PRODUCERS`, else by its folder), for
    error messages; a relative or absolute path under the project root alike."""
    path = Path(path)
    for candidate in (path.as_posix(), path.parent.as_posix()):
        for written, stage in PRODUCERS.items():
            if candidate == written.as_posix() or candidate.endswith(f"/{written.as_posix()}"):
                return stage
    return "upstream"


def read_images(source: str | Path) -> Store:
    """Open a pixel store (memory-mapped, read-only): stages touch only the rows they need."""
    images = Store(source, producer_of(source))
    return images


def write_samples(target: str | Path, samples: pd.DataFrame) -> None:
    """Write a sample table; the index is dropped so row order is the only order."""
    missing = [column for column in CORE_COLUMNS if column not in samples.columns]
    if missing:
        raise ValueError(f"sample table lacks core columns {missing}")
    if not samples["sample_id"].is_unique:
        raise ValueError("sample table has duplicate sample_id values")
    with atomic_path(target) as tmp:
        samples.reset_index(drop=True).to_parquet(tmp, index=False, compression="zstd")


def read_samples(source: str | Path) -> pd.DataFrame:
    """A sample table; a missing, truncated or garbled file stops with one line naming it."""
    source, producer = Path(source), producer_of(source)
    if not source.exists():
        raise CurateError(f"{source}: not found (run the {producer} stage first: dvc repro)")
    try:
        samples = pd.read_parquet(source)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CurateError(
            f"{source}: not a readable sample table ({reason}); re-run the {producer} stage"
        ) from None
    require_columns(samples, source, CORE_COLUMNS)
    return samples


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


@dataclass
class RawInputs:
    """What ingest wrote, as the stages that read the raw data whole (folds, clean) take it."""

    samples: pd.DataFrame  # the raw table, every row
    images: Store  # the raw store, memory-mapped
    class_names: list[str]  # (K,) class names by label
    files: tuple[Path, ...]  # what was read: the stage notes them in its lineage

    @property
    def train(self) -> pd.DataFrame:
        return self.samples[self.samples["split"] == "train"]


def read_raw() -> RawInputs:
    """The raw table and store, checked as every reader checks them."""
    samples = read_samples(RAW_SAMPLES)
    return RawInputs(samples, read_images(RAW_IMAGES), class_names_of(samples), (RAW_SAMPLES, RAW_IMAGES))


def content_ids(payloads: Sequence[bytes]) -> list[str]:
    """Stable, unique ids from content: 16 hex digits of SHA-256, ``-k`` on repeats.

    Callers pass payloads in a stable order (sorted paths), so the k-th copy of
    identical bytes always gets the same suffix.
    """
    return unique_ids([hashlib.sha256(payload).hexdigest()[:16] for payload in payloads])


def unique_ids(digests: Sequence[str]) -> list[str]:
    """Digests made unique in order: the k-th repeat of a digest gets ``-k``."""
    seen: Counter[str] = Counter()
    ids = []
    for digest in digests:
        ids.append(f"{digest}-{seen[digest]}" if seen[digest] else digest)
        seen[digest] += 1
    return ids


def class_names_of(samples: pd.DataFrame) -> list[str]:
    """Class names in label order (``label`` indexes this list)."""
    pairs = samples[["label", "label_name"]].drop_duplicates().sort_values("label")
    return pairs["label_name"].tolist()


def stratified_test_mask(strata: Sequence[str], test_fraction: float, seed: int) -> np.ndarray:
    """Mark ``round(test_fraction * n)`` rows of each stratum as test, reproducibly under ``seed``.

    Done by hand rather than with scikit-learn so that strata of one sample
    stay in train instead of failing the whole split.
    """
    strata = pd.Series(list(strata))
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(strata), dtype=bool)
    for _, rows in sorted(strata.groupby(strata).groups.items()):
        chosen = rng.permutation(np.asarray(rows))[: round(test_fraction * len(rows))]
        is_test[chosen] = True
    return is_test


def keyed_test_mask(
    strata: Sequence[str], keys: Sequence[str], test_fraction: float, seed: int
) -> np.ndarray:
    """Mark ``round(test_fraction * n)`` rows of each stratum as test: those whose key hashes
    lowest under ``seed``.

    A row's rank depends on its own key, not on the other rows, so a data set that grows keeps
    its split: adding ``k`` rows to a stratum moves at most ``k + 1`` of its old rows between
    train and test, where a permutation of the stratum (:func:`stratified_test_mask`) deals every
    row anew. Test rows of one version stay out of the next one's training, and figures of two
    versions compare. Keys are unique within a stratum (a path).
    """
    salt = f"{seed}\0".encode()
    ranks = np.array([hashlib.sha256(salt + key.encode()).digest()[:8] for key in keys], dtype="S8")
    frame = pd.DataFrame({"stratum": list(strata), "rank": ranks, "key": list(keys)})
    is_test = np.zeros(len(frame), dtype=bool)
    for _, rows in frame.groupby("stratum", sort=True):
        ordered = rows.sort_values(["rank", "key"]).index.to_numpy()
        is_test[ordered[: round(test_fraction * len(rows))]] = True
    return is_test


def training_rows(samples: pd.DataFrame) -> pd.DataFrame:
    """The train rows still in play: split ``train`` and not dropped by the clean stage."""
    in_train = samples["split"] == "train"
    if "action" in samples.columns:
        in_train &= samples["action"] != "drop"
    return samples[in_train]


def gather_images(samples: pd.DataFrame, stores: dict[str, Path] | None = None) -> np.ndarray:
    """The images of ``samples``, in table order, read from the store each row points into."""
    stores = IMAGE_STORES if stores is None else stores
    store_of_row = _store_of_row(samples)
    rows = samples["row"].to_numpy()
    out = None
    for store in sorted(store_of_row.unique()):
        images = read_images(stores[store])
        mask = (store_of_row == store).to_numpy()
        if out is None:
            out = np.empty((len(samples), *images.shape[1:]), dtype=np.uint8)
        out[mask] = images.take(rows[mask])  # each segment read in sorted row order
    return out if out is not None else np.empty((0, 0, 0, 0), dtype=np.uint8)


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
    """:class:`ImageRows` of ``samples`` in table order: the lazy counterpart of :func:`gather_images`.

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

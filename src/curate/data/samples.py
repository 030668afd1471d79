"""The sample table, ``samples.parquet``: one row per sample, the form in which stages pass data on.

Core columns (see :data:`CORE_COLUMNS`):

- ``sample_id``: a content hash of the source bytes, so a file moved to
  another class folder keeps its id (and shows up as relabelled); identical
  bytes in two files get ``-1``, ``-2`` suffixes in path order, so ids stay unique
  (:func:`content_ids`);
- ``path``: the source file relative to the source folder (``mnist/00042`` for the demo);
- ``row``: the sample's global row in its store (segments in index order;
  :mod:`curate.data.image_rows` reads them);
- ``label`` (int, index into the sorted class names), ``label_name``, ``group``,
  ``split`` (``train`` | ``test``).

Stages add their own columns (``label_quality``, ``action``, ``weight``, ...)
and pass tables on, never copies of images.

Readers and writers keep no record of what they touched: a stage names each file it reads
and writes to its :class:`curate.data.lineage.Lineage`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from curate.data.atomic import atomic_path
from curate.data.image_rows import read_images
from curate.data.inputs import require_columns
from curate.data.paths import RAW_IMAGES, RAW_SAMPLES, producer_of
from curate.data.store import Store
from curate.errors import CurateError

CORE_COLUMNS = ("sample_id", "path", "row", "label", "label_name", "group", "split")


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

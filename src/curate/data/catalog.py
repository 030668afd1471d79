"""What every source form shares: a catalog of candidate images, decoded into the raw store in
store-key order, and the sample table made from it.

A source (an ImageFolder, WebDataset tar shards, Parquet shards) is first listed into a
:class:`Catalog`: compact arrays with one entry per candidate image (its path, its class, the
fields the source gives it) and a :class:`curate.data.decoding.Payloads` that reads an entry's
bytes in any process. :func:`read_catalog` decodes every entry over the ``ingest.workers`` pool
in store-key order, streams the pixels into the store, and makes the table in path order;
metadata.csv and the keyed split finish it. One path from a catalog to the outputs is what makes
the same images give the same store bytes and the same ``samples.parquet`` in every form.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from curate.data.decoding import Payloads, decode_in_order, worker_count
from curate.data.image_rows import read_images, store_writer
from curate.data.imaging import FLOAT_MODES, WIDE_INTEGER_MODES
from curate.data.metadata import METADATA_FILE, Known, apply_metadata
from curate.data.samples import CORE_COLUMNS, unique_ids
from curate.data.splits import keyed_test_mask
from curate.errors import CurateError
from curate.params import ImageParams, IngestParams

# Why a file was skipped; the verdict words each one (see curate.stages.ingest).
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not an image"
SYMLINK_OUTSIDE = "symlink outside the source folder"
OUTSIDE_CLASSES = "not in a class folder"
SKIP_REASONS = (UNREADABLE, NOT_AN_IMAGE, SYMLINK_OUTSIDE, OUTSIDE_CLASSES)


class Skipped(NamedTuple):
    path: str  # relative to the source folder (a member's name in its shard), NFC
    reason: str  # one of SKIP_REASONS
    detail: str = ""


@dataclass
class SourceData:
    """What ingest read: the store, the table, what was skipped and why, and what was converted."""

    images: np.ndarray
    samples: pd.DataFrame
    skipped: list[Skipped] = field(default_factory=list)  # in path order
    source_sizes: Counter = field(default_factory=Counter)  # (width, height) -> count
    source_modes: Counter = field(default_factory=Counter)  # PIL mode -> count
    n_multiframe: int = 0  # files with more than one frame (first frame kept)
    n_unlisted: int = 0  # images put in default_group (ingest.unlisted: default_group)
    default_group: str = ""  # the group they went to

    @property
    def n_16bit(self) -> int:
        return sum(n for mode, n in self.source_modes.items() if mode in WIDE_INTEGER_MODES)

    @property
    def n_float(self) -> int:
        return sum(n for mode, n in self.source_modes.items() if mode in FLOAT_MODES)

    def n_skipped(self, reason: str | None = None) -> int:
        return sum(1 for entry in self.skipped if reason is None or entry.reason == reason)


@dataclass
class Catalog:
    """Every candidate image of a source before any pixel is read: one entry each, in arrays
    (no Python object per image but its path), so a million images cost tens of MB."""

    source: Path
    paths: np.ndarray  # (N,) object: the sample's path relative to the source (a member's name), NFC
    labels: np.ndarray  # (N,) int: index into class_names
    class_names: list[str]  # in label order
    payloads: Payloads  # reads entry i's bytes, in whichever process decodes it
    fields: pd.DataFrame  # (N, k) str: the group / split / extra columns the source gives ('' none)
    skipped: list[Skipped] = field(default_factory=list)  # left out while listing
    unit: str = "file in the class folders"  # what a metadata.csv path names
    shards: list[Path] = field(default_factory=list)  # the shard files of a sharded source
    shard_of: np.ndarray | None = None  # (N,) index into shards; None: loose files

    def where(self, entry: int) -> str:
        """An entry as a message names it: its file, or its shard and its name there."""
        if self.shard_of is None:
            return str(self.source / self.paths[entry])
        return f"{self.shards[self.shard_of[entry]]}: {self.paths[entry]}"


def store_key(relative: str, class_name: str) -> tuple[str, str]:
    """Where a sample's row goes in the store: its order (the path without its class folder,
    then the whole path to break ties between classes) and its cut key (the path without its
    class folder), so a relabel, a move between class folders, keeps the row's place and its
    segment's bytes. A path that does not start with its class name (a shard's member named
    ``000123.jpg``, a Parquet row's ``path``) keys as a whole: it stays put when its label changes."""
    prefix = f"{class_name}/"
    within = relative[len(prefix) :] if relative.startswith(prefix) else relative
    return (f"{within}\0{relative}", within)


def path_order(paths: np.ndarray) -> np.ndarray:
    """The positions of ``paths`` sorted folder by folder (``a/b`` before ``a.b/c``, as a sorted
    walk lists them): string order with ``/`` lowest, which ``\\0`` stands for."""
    return np.argsort(np.array([path.replace("/", "\0") for path in paths], dtype=object), kind="stable")


def read_catalog(
    catalog: Catalog,
    image: ImageParams,
    settings: IngestParams,
    seed: int,
    target: Path,
    check: Callable[[set[str], list[Skipped]], None],
) -> SourceData:
    """Decode every entry straight into the store at ``target``, in store-key order, over
    ``ingest.workers`` processes (unreadable ones are skipped or stop the run); ``check`` the
    classes holding a readable image; the finished table in path order, each row pointing at
    its image's place in the store."""
    names = np.asarray(catalog.class_names, dtype=object)
    label_names = names[catalog.labels] if len(catalog.labels) else np.empty(0, dtype=object)
    keys = [store_key(path, name)[0] for path, name in zip(catalog.paths, label_names, strict=True)]
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    del keys  # a string an image: freed before decoding, not held to the end
    data = SourceData(images=np.empty(0), samples=pd.DataFrame(), skipped=list(catalog.skipped))
    digests = np.zeros(len(order), dtype="S16")
    rows = np.full(len(order), -1, dtype=np.int64)
    shape, written = (image.size, image.size, image.channels), 0
    decoded = decode_in_order(
        catalog.payloads, order, image, settings.rescale_16bit, worker_count(settings.workers)
    )
    with store_writer(target, shape, settings.segment_mb) as writer:
        progress = tqdm(decoded, total=len(order), desc="ingest: reading images", unit="img", disable=None)
        for entry, result in zip(order, progress, strict=True):
            relative = catalog.paths[entry]
            if result.pixels is None:
                if settings.on_bad_image == "fail":
                    raise CurateError(f"{catalog.where(entry)}: unreadable image ({result.failure})")
                data.skipped.append(Skipped(relative, UNREADABLE, result.failure))
                continue
            writer.append(result.pixels[None], [store_key(relative, label_names[entry])[1]])
            rows[entry], written = written, written + 1
            digests[entry] = result.digest.encode()
            data.source_sizes[result.size] += 1
            data.source_modes[result.mode] += 1
            data.n_multiframe += int(result.frames > 1)
        # Every check and the table before the store is published: a stop leaves none, or the
        # previous one, never a new store beside the previous table.
        data.skipped.sort(key=lambda entry: entry.path.split("/"))
        kept = np.flatnonzero(rows >= 0)
        kept = kept[path_order(catalog.paths[kept])]
        check(set(label_names[kept]), data.skipped)
        samples = pd.DataFrame(
            {
                "sample_id": unique_ids(digests[kept].astype(str).tolist()),
                "path": catalog.paths[kept],
                "label_name": label_names[kept],
                "row": rows[kept],
                "label": catalog.labels[kept].astype(np.int64),
            }
        )
        data.samples = _finish(samples, catalog.fields.iloc[kept], catalog, settings, seed, data)
    data.images = read_images(target)
    return data


def _finish(
    samples: pd.DataFrame,
    given: pd.DataFrame,
    catalog: Catalog,
    settings: IngestParams,
    seed: int,
    data: SourceData,
) -> pd.DataFrame:
    """Group, split and extra columns (the source's fields ``given``, rows as ``samples``'s, then
    metadata.csv), and the keyed split of the rows neither assigns; the core columns and the
    extra ones, in that order."""
    known = Known({entry.path for entry in data.skipped}, catalog.unit)
    given = given.reset_index(drop=True)
    samples, data.n_unlisted = apply_metadata(samples, given, catalog.source / METADATA_FILE, settings, known)
    data.default_group = settings.default_group if data.n_unlisted else ""
    unassigned = samples["split"] == ""
    strata = samples["group"] + ":" + samples["label_name"]
    # Keyed on the store's cut key (the path without the class folder): a sample keeps its split
    # as the source grows, and a relabelled one its rank.
    keys = [
        store_key(path, name)[1]
        for path, name in zip(
            samples.loc[unassigned, "path"], samples.loc[unassigned, "label_name"], strict=True
        )
    ]
    is_test = keyed_test_mask(strata[unassigned], keys, settings.test_fraction, seed)
    samples.loc[unassigned, "split"] = np.where(is_test, "test", "train")
    return samples[[*CORE_COLUMNS, *settings.extra_columns]]

"""Bring your own data: read an ImageFolder (one subfolder per class) plus optional metadata.csv.

Layout::

    <source>/<class name>/**/<image>   any format Pillow reads (png, jpg, tif, gif, webp, bmp, ...),
                                       whatever the extension's case
    <source>/metadata.csv              optional: path (relative to <source>), group, split,
                                       and the columns named in ingest.extra_columns

Every file is read faithfully, or skipped with its reason in the report, or the stage stops
with one line naming the file, column or class:

* images of any size and mode are resized to ``image.size`` and converted to
  ``image.channels``; 16-bit and float images are scaled to 8 bits first
  (:func:`curate.data.imaging.to_8bit`); a multi-frame file (animated GIF, multi-page TIFF)
  gives its first frame;
* skipped, and counted per reason: unreadable files (``on_bad_image: skip``; ``fail``
  stops), files that are not images, symlinks that point outside the source folder
  (unless ``follow_symlinks``), files outside any class folder. Hidden dot-files and
  dot-folders are ignored;
* names are compared in Unicode NFC (a folder ``café`` written NFD by macOS matches the
  NFC path in metadata.csv); the stored ``path`` and ``label_name`` are NFC;
* a class folder with no readable image, fewer than two classes, and every fault of
  metadata.csv (:func:`_read_metadata`, :func:`_apply_metadata`) stop the stage.
"""

from __future__ import annotations

import difflib
import functools
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from curate.data.csvfile import read_table
from curate.data.decoding import decode_in_order, worker_count
from curate.data.image_rows import read_images, store_writer
from curate.data.imaging import FLOAT_MODES, WIDE_INTEGER_MODES
from curate.data.samples import CORE_COLUMNS, unique_ids
from curate.data.splits import keyed_test_mask
from curate.errors import CurateError
from curate.params import ImageParams, IngestParams

METADATA_FILE = "metadata.csv"
METADATA_COLUMNS = ("path", "group", "split")
DEFAULT_GROUP = "all"  # every sample's group when metadata.csv has no group column
# Columns that curate itself writes into the sample tables: an extra metadata column of the
# same name would be overwritten by a later stage, so it is refused up front.
STAGE_COLUMNS = frozenset(CORE_COLUMNS) | {
    *("true_label", "given_label", "predicted_label", "predicted_confidence", "label_quality"),
    *("is_label_issue", "action", "weight", "parent_id", "store", "recipe", "rebalance_group", "pred_row"),
}
SHOWN_PATHS = 3  # paths quoted in a one-line error

# Why a file was skipped; the verdict words each one (see curate.stages.ingest).
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not an image"
SYMLINK_OUTSIDE = "symlink outside the source folder"
OUTSIDE_CLASSES = "not in a class folder"
SKIP_REASONS = (UNREADABLE, NOT_AN_IMAGE, SYMLINK_OUTSIDE, OUTSIDE_CLASSES)


class Skipped(NamedTuple):
    path: str  # relative to the source folder, NFC
    reason: str  # one of SKIP_REASONS
    detail: str = ""


@dataclass
class FolderData:
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
class _Listing:
    classes: dict[str, Path] = field(default_factory=dict)  # NFC class name -> folder
    files: list[tuple[str, str, Path]] = field(default_factory=list)  # (class, relative path, file)
    skipped: list[Skipped] = field(default_factory=list)


def read_image_folder(
    source: Path, image: ImageParams, settings: IngestParams, seed: int, target: Path
) -> FolderData:
    """Read ``source`` into the pixel store ``target`` and a sample table (see the module docstring)."""
    if not source.is_dir():
        raise CurateError(f"ingest.source: {str(source)!r} is not a folder")
    listing = _list_source(source, settings.follow_symlinks)
    if not listing.classes:
        raise CurateError(f"{source}: no class subfolders (expected <source>/<class>/<image>)")
    if len(listing.classes) < 2:
        raise CurateError(
            f"{source}: one class only ({next(iter(listing.classes))!r}); "
            "a classifier needs at least two class folders"
        )
    _require_images(source, listing, {name for name, _, _ in listing.files})
    data = _read_images(source, listing, image, settings, target)
    _require_images(source, listing, set(data.samples["label_name"]))
    names = sorted(listing.classes)
    samples = data.samples
    samples["label"] = samples["label_name"].map({name: i for i, name in enumerate(names)})
    samples = _apply_metadata(samples, source / METADATA_FILE, settings, data)
    unassigned = samples["split"] == ""
    strata = samples["group"] + ":" + samples["label_name"]
    # Keyed on the path without the class folder: a file keeps its split as the folder grows,
    # and a relabelled one its rank (the key store_key cuts on).
    keys = [store_key(path)[1] for path in samples.loc[unassigned, "path"]]
    is_test = keyed_test_mask(strata[unassigned], keys, settings.test_fraction, seed)
    samples.loc[unassigned, "split"] = np.where(is_test, "test", "train")
    data.samples = samples[[*CORE_COLUMNS, *settings.extra_columns]]
    return data


# --- listing ---------------------------------------------------------------------------


def _list_source(source: Path, follow_symlinks: bool) -> _Listing:
    """Class folders and candidate files, in path order; what is left aside goes to ``skipped``."""
    root = source.resolve()
    listing = _Listing()
    for path in _visible(source):
        name = _nfc(path.name)
        if _refused(path, name, root, follow_symlinks, listing):
            continue
        if path.is_dir():
            if name in listing.classes:
                raise CurateError(f"{source}: two class folders are named {name!r} once Unicode-normalised")
            listing.classes[name] = path
        elif name != METADATA_FILE:
            listing.skipped.append(Skipped(name, OUTSIDE_CLASSES))
    for name, folder in listing.classes.items():
        _list_class(name, folder, root, follow_symlinks, listing)
    by_path = Counter(relative for _, relative, _ in listing.files)
    twice = sorted(relative for relative, n in by_path.items() if n > 1)
    if twice:
        raise CurateError(f"{source}: two files are named {twice[0]!r} once Unicode-normalised")
    listing.files.sort(key=lambda item: item[1].split("/"))
    listing.skipped.sort(key=lambda entry: entry.path.split("/"))
    return listing


def _list_class(name: str, folder: Path, root: Path, follow_symlinks: bool, listing: _Listing) -> None:
    """Walk one class folder, symlinked folders included once each (a symlink loop ends)."""
    suffixes = _image_suffixes()
    seen: set[Path] = set()
    pending = [(folder, name)]
    while pending:
        directory, prefix = pending.pop()
        if directory.resolve() in seen:
            continue
        seen.add(directory.resolve())
        for path in _visible(directory):
            relative = f"{prefix}/{_nfc(path.name)}"
            if _refused(path, relative, root, follow_symlinks, listing):
                continue
            if path.is_dir():
                pending.append((path, relative))
            elif path.is_file() and path.suffix.lower() in suffixes:
                listing.files.append((name, relative, path))
            else:
                listing.skipped.append(Skipped(relative, NOT_AN_IMAGE))


def _refused(path: Path, relative: str, root: Path, follow_symlinks: bool, listing: _Listing) -> bool:
    """Skip a broken symlink, and one that leaves the source folder unless following is allowed."""
    if not path.is_symlink():
        return False
    if not path.exists():
        listing.skipped.append(Skipped(relative, UNREADABLE, "broken symlink"))
        return True
    if not follow_symlinks and not path.resolve().is_relative_to(root):
        listing.skipped.append(Skipped(relative, SYMLINK_OUTSIDE, "ingest.follow_symlinks: false"))
        return True
    return False


def _visible(directory: Path) -> list[Path]:
    """The entries of ``directory`` without hidden dot-files and dot-folders, sorted by name."""
    try:
        return sorted(path for path in directory.iterdir() if not path.name.startswith("."))
    except OSError as exc:
        raise CurateError(f"{directory}: cannot list the folder ({exc.strerror})") from None


@functools.cache
def _image_suffixes() -> frozenset[str]:
    """Extensions of every format Pillow can open (lower case): .png .jpg .tif .gif .webp ..."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _require_images(source: Path, listing: _Listing, classes_with_images: set[str]) -> None:
    """Stop on the first class folder without an image, saying what it held instead."""
    for name in listing.classes:
        if name not in classes_with_images:
            reasons = Counter(entry.reason for entry in listing.skipped if entry.path.startswith(f"{name}/"))
            held = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) or "empty"
            raise CurateError(f"{source / name}: class folder with no readable image ({held})")


# --- reading ---------------------------------------------------------------------------


def store_key(relative: str) -> tuple[str, str]:
    """Where a file's row goes in the store: its order (the path without the class folder, then
    the whole path to break ties between classes) and its cut key (the path without the class
    folder), so a relabel, a move between class folders, keeps the row's place and its
    segment's bytes."""
    within = relative.split("/", 1)[-1]
    return (f"{within}\0{relative}", within)


def _read_images(
    source: Path, listing: _Listing, image: ImageParams, settings: IngestParams, target: Path
) -> FolderData:
    """Decode every listed file straight into the store at ``target``, in store-key order, over
    ``ingest.workers`` processes; unreadable files are skipped or stop. The table comes back in
    path order, each row pointing at its image's place in the store."""
    files = sorted(listing.files, key=lambda item: store_key(item[1])[0])
    data = FolderData(images=np.empty(0), samples=pd.DataFrame(), skipped=listing.skipped)
    rows: list[dict] = []
    shape = (image.size, image.size, image.channels)
    decoded_files = decode_in_order(
        [path for _, _, path in files], image, settings.rescale_16bit, worker_count(settings.workers)
    )
    with store_writer(target, shape, settings.segment_mb) as writer:
        progress = tqdm(
            decoded_files, total=len(files), desc="ingest: reading images", unit="img", disable=None
        )
        for (class_name, relative, _), decoded in zip(files, progress, strict=True):
            if decoded.pixels is None:
                if settings.on_bad_image == "fail":
                    raise CurateError(f"{source / relative}: unreadable image ({decoded.failure})")
                data.skipped.append(Skipped(relative, UNREADABLE, decoded.failure))
                continue
            writer.append(decoded.pixels[None], [store_key(relative)[1]])
            data.source_sizes[decoded.size] += 1
            data.source_modes[decoded.mode] += 1
            data.n_multiframe += int(decoded.frames > 1)
            rows.append(
                {"digest": decoded.digest, "path": relative, "label_name": class_name, "row": len(rows)}
            )
    data.skipped.sort(key=lambda entry: entry.path.split("/"))
    data.images = read_images(target)
    table = pd.DataFrame(rows, columns=["digest", "path", "label_name", "row"])
    in_path_order = {relative: i for i, (_, relative, _) in enumerate(listing.files)}
    table = table.sort_values("path", key=lambda paths: paths.map(in_path_order)).reset_index(drop=True)
    table.insert(0, "sample_id", unique_ids(table.pop("digest").tolist()))
    data.samples = table
    return data


# --- metadata.csv ----------------------------------------------------------------------


def _read_metadata(path: Path, extra_columns: list[str]) -> pd.DataFrame:
    """metadata.csv as strings, columns checked; the index is the line number in an editor."""
    table = read_table(path, "a header line such as path,group,split")
    header = list(table.columns)
    for name in header:
        if name not in METADATA_COLUMNS and name not in extra_columns:
            close = difflib.get_close_matches(name, METADATA_COLUMNS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(METADATA_COLUMNS)})"
            raise CurateError(
                f"{path}: unknown column {name!r}{hint}; list it in ingest.extra_columns to keep it"
            )
    for name in extra_columns:
        if name in STAGE_COLUMNS or name in METADATA_COLUMNS:
            raise CurateError(f"ingest.extra_columns: {name!r} is a column curate writes itself")
        if name not in header:
            raise CurateError(f"{path}: column {name!r} (listed in ingest.extra_columns) is missing")
    if "path" not in header:
        raise CurateError(f"{path}: missing column 'path'")
    if table.empty:
        raise CurateError(f"{path}: a header and no rows (list one image per line, or delete the file)")
    return table


def _apply_metadata(
    samples: pd.DataFrame, metadata_path: Path, settings: IngestParams, data: FolderData
) -> pd.DataFrame:
    """Join the optional metadata.csv on ``path``; fill ``group`` and ``split`` defaults."""
    samples = samples.assign(group=DEFAULT_GROUP, split="")
    if not metadata_path.exists():
        if settings.extra_columns:
            raise CurateError(
                f"{metadata_path}: not found, but ingest.extra_columns lists {settings.extra_columns[0]!r}"
            )
        return samples
    metadata = _read_metadata(metadata_path, settings.extra_columns)
    metadata["path"] = metadata["path"].map(_nfc)
    _check_metadata_paths(metadata, metadata_path, set(samples["path"]), data.skipped)
    by_path = metadata.set_index("path")
    if "group" in by_path.columns:
        samples["group"] = samples["path"].map(by_path["group"].str.strip()).fillna("")
        samples = _fill_unlisted(samples, metadata_path, settings, data)
    if "split" in by_path.columns:
        split = metadata["split"].str.strip()
        bad = split[~split.isin(["train", "test", ""])]
        if len(bad):
            raise CurateError(
                f"{metadata_path} line {bad.index[0]}: split {bad.iloc[0]!r} is not 'train' or 'test'"
            )
        samples["split"] = samples["path"].map(split.set_axis(metadata["path"])).fillna("")
    for column in settings.extra_columns:
        samples[column] = samples["path"].map(by_path[column]).fillna("")
    return samples


def _check_metadata_paths(
    metadata: pd.DataFrame, path: Path, images: set[str], skipped: list[Skipped]
) -> None:
    """Every listed path is unique and names a file of the folder (read, or skipped with a reason)."""
    empty = metadata[metadata["path"].str.strip() == ""]
    if len(empty):
        raise CurateError(f"{path} line {empty.index[0]}: empty path")
    duplicated = metadata["path"][metadata["path"].duplicated()]
    if len(duplicated):
        raise CurateError(f"{path}: path {duplicated.iloc[0]!r} is listed twice")
    known = images | {entry.path for entry in skipped}
    unknown = metadata[~metadata["path"].isin(known)]
    if len(unknown):
        line, relative = unknown.index[0], unknown["path"].iloc[0]
        raise CurateError(f"{path} line {line}: path {relative!r} matches no file in the class folders")


def _fill_unlisted(
    samples: pd.DataFrame, path: Path, settings: IngestParams, data: FolderData
) -> pd.DataFrame:
    """Images missing from metadata.csv, or listed with an empty group: stop, or default_group."""
    unlisted = samples["group"] == ""
    if not unlisted.any():
        return samples
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
    data.n_unlisted, data.default_group = int(unlisted.sum()), settings.default_group
    samples.loc[unlisted, "group"] = settings.default_group
    return samples

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
  metadata.csv (:mod:`curate.data.metadata`) stop the stage.

The files are decoded into the store and made a table as every source form is
(:func:`curate.data.catalog.read_catalog`).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from curate.data.catalog import (
    NOT_AN_IMAGE,
    OUTSIDE_CLASSES,
    SYMLINK_OUTSIDE,
    UNREADABLE,
    Catalog,
    Skipped,
    SourceData,
    read_catalog,
)
from curate.data.decoding import FilePayloads
from curate.data.metadata import METADATA_FILE, nfc
from curate.errors import CurateError
from curate.params import ImageParams, IngestParams


@dataclass
class _Listing:
    classes: dict[str, Path] = field(default_factory=dict)  # NFC class name -> folder
    # (class, relative path, file): the file as a string, a tenth of a Path's memory (a million
    # Paths, each with its parts, took ~500 MB).
    files: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def read_image_folder(
    source: Path, image: ImageParams, settings: IngestParams, seed: int, target: Path
) -> SourceData:
    """Read ``source`` into the pixel store ``target`` and a sample table (see the module docstring)."""
    listing = list_image_folder(source, settings.follow_symlinks)
    _require_images(source, listing.classes, {name for name, _, _ in listing.files}, listing.skipped)
    names = sorted(listing.classes)
    code = {name: i for i, name in enumerate(names)}
    catalog = Catalog(
        source=source,
        paths=np.array([relative for _, relative, _ in listing.files], dtype=object),
        labels=np.array([code[name] for name, _, _ in listing.files], dtype=np.int64),
        class_names=names,
        payloads=FilePayloads([path for _, _, path in listing.files]),
        fields=pd.DataFrame(index=range(len(listing.files))),
        skipped=listing.skipped,
    )
    return read_catalog(
        catalog,
        image,
        settings,
        seed,
        target,
        lambda present, skipped: _require_images(source, listing.classes, present, skipped),
    )


def list_image_folder(source: Path, follow_symlinks: bool) -> _Listing:
    """Class folders and candidate image files, in path order, checked: a folder, two classes or more."""
    if not source.is_dir():
        raise CurateError(f"ingest.source: {str(source)!r} is not a folder")
    listing = _list_source(source, follow_symlinks)
    if not listing.classes:
        raise CurateError(
            f"{source}: no class subfolders, tar shards or Parquet shards "
            "(expected <source>/<class>/<image>, <source>/*.tar or <source>/*.parquet)"
        )
    if len(listing.classes) < 2:
        raise CurateError(
            f"{source}: one class only ({next(iter(listing.classes))!r}); "
            "a classifier needs at least two class folders"
        )
    return listing


# --- listing ---------------------------------------------------------------------------


def _list_source(source: Path, follow_symlinks: bool) -> _Listing:
    """Class folders and candidate files, in path order; what is left aside goes to ``skipped``."""
    root = source.resolve()
    listing = _Listing()
    for path in visible(source):
        name = nfc(path.name)
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
    suffixes = image_suffixes()
    seen: set[Path] = set()
    pending = [(folder, name)]
    while pending:
        directory, prefix = pending.pop()
        if directory.resolve() in seen:
            continue
        seen.add(directory.resolve())
        for path in visible(directory):
            relative = f"{prefix}/{nfc(path.name)}"
            if _refused(path, relative, root, follow_symlinks, listing):
                continue
            if path.is_dir():
                pending.append((path, relative))
            elif path.is_file() and path.suffix.lower() in suffixes:
                listing.files.append((name, relative, str(path)))
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


def visible(directory: Path) -> list[Path]:
    """The entries of ``directory`` without hidden dot-files and dot-folders, sorted by name."""
    try:
        return sorted(path for path in directory.iterdir() if not path.name.startswith("."))
    except OSError as exc:
        raise CurateError(f"{directory}: cannot list the folder ({exc.strerror})") from None


@functools.cache
def image_suffixes() -> frozenset[str]:
    """Extensions of every format Pillow can open (lower case): .png .jpg .tif .gif .webp ..."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _require_images(
    source: Path, classes: dict[str, Path], classes_with_images: set[str], skipped: list[Skipped]
) -> None:
    """Stop on the first class folder without an image, saying what it held instead."""
    for name in classes:
        if name not in classes_with_images:
            reasons = Counter(entry.reason for entry in skipped if entry.path.startswith(f"{name}/"))
            held = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) or "empty"
            raise CurateError(f"{source / name}: class folder with no readable image ({held})")

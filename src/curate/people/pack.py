"""``curate pack SRC DST [--shard-mb N]``: an ImageFolder as WebDataset tar shards, the form a
large data set is versioned in (DVC tracks a thousand shards where a million loose files cost it
minutes per command).

What goes in: every file ingest would read from the folder (class folders, image extensions, no
hidden files, no symlink leaving the folder unless ``--follow-symlinks``), as its original bytes,
never re-encoded, so a sample's id (the hash of its bytes) is the folder's. Each sample is two
members: the image under its path in the folder (``cat/2024/IMG_01.jpg``) and ``<key>.json``
(``cat/2024/IMG_01.json``) holding its ``label`` (the class folder) and every column of
metadata.csv (group, split, extra columns; '' for a file it does not list). ``classes.txt``
lists the class folders. Ingesting DST gives the store and samples.parquet the folder gives.

Deterministic: samples in the store's order (the path without its class folder, then the whole
path), shards filled to about ``--shard-mb`` MiB, every header field fixed
(:func:`curate.data.tars.member_header`): the same files give the same bytes.

Versions: DST is its own manifest (a shard's members are the paths it holds). A re-pack keeps
every shard whose samples are unchanged byte for byte, puts the files not yet packed into new
shards numbered on, and rewrites in place (same name) a shard one of whose files changed (its
bytes, class folder or metadata) or was deleted, removing it when nothing is left. DVC then
stores the new and the rewritten shards only. A re-pack reads the folder and the shards once.

``--shard-mb`` 256 by default: WebDataset and Hugging Face keep shards at 100 MB to 1 GB, which
read at disk speed; an append costs its own new shards whatever their size, but a deletion or
an edit rewrites the whole shard that held the file. 1M 32 px PNGs (~2.3 KB, ~4 KB a sample with
the headers and the json) make ~16 shards; 1M 100 KB photos ~400.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from curate.data.atomic import atomic_path, write_text
from curate.data.catalog import store_key
from curate.data.folder import list_image_folder, visible
from curate.data.metadata import METADATA_FILE, metadata_by_path
from curate.data.shards import CLASSES_FILE
from curate.data.tars import BLOCK, Member, is_image_name, padding, scan_tar, split_key, write_tar
from curate.errors import CurateError
from curate.stage import guarded

DEFAULT_SHARD_MB = 256
SHARD = "shard-{:06d}.tar"
SHARD_NAME = re.compile(r"^shard-([0-9]{6})\.tar$")


@dataclass
class Folder:
    """The folder's samples in store order: each path, class, file and metadata cells, compact
    (a million images: one string a path and a file, the cells as categorical codes)."""

    paths: list[str]
    labels: list[str]  # the class folder of each
    files: list[str]
    columns: dict[str, tuple[np.ndarray, list[str]]]  # metadata.csv's: codes, values ('' unlisted)
    class_names: list[str]
    at: dict[str, int] = field(init=False)  # path -> position

    def __post_init__(self) -> None:
        self.at = {path: i for i, path in enumerate(self.paths)}

    def members(self, path: str) -> Iterator[tuple[str, bytes]]:
        """A sample's two members: the image's original bytes, then its json."""
        i = self.at[path]
        yield path, Path(self.files[i]).read_bytes()
        yield f"{json_key(path)}.json", self.record(i)

    def record(self, i: int) -> bytes:
        cells = {column: values[codes[i]] for column, (codes, values) in self.columns.items()}
        record = {"label": self.labels[i]} | cells
        return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class Packed:
    images: int = 0
    kept: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    skipped: int = 0


def json_key(path: str) -> str:
    key = split_key(path)
    assert key is not None  # an image file's name has an extension
    return key[0]


def read_folder(source: Path, follow_symlinks: bool) -> tuple[Folder, int]:
    """The folder's images as samples (a WebDataset key twice stops), and how many files were left out."""
    listing = list_image_folder(source, follow_symlinks)
    files = sorted(listing.files, key=lambda item: store_key(item[1], item[0])[0])
    paths = [relative for _, relative, _ in files]
    keys = pd.Series([json_key(path) for path in paths])
    twice = keys[keys.duplicated(keep=False)]
    if len(twice):
        shown = " and ".join(paths[i] for i in twice.index[twice == twice.iloc[0]][:2])
        raise CurateError(f"{source}: {shown} share the WebDataset key {twice.iloc[0]!r}; rename one")
    columns: dict[str, tuple[np.ndarray, list[str]]] = {}
    if (source / METADATA_FILE).exists():
        known = [*paths, *(entry.path for entry in listing.skipped)]
        by_path = metadata_by_path(source / METADATA_FILE, known, "file in the class folders", None)
        for column in by_path.columns:
            cells = pd.Categorical(by_path[column].reindex(paths).fillna(""))
            columns[column] = (cells.codes, list(cells.categories))
    folder = Folder(
        paths,
        [name for name, _, _ in files],
        [file for _, _, file in files],
        columns,
        sorted(listing.classes),
    )
    return folder, len(listing.skipped)


def existing_shards(target: Path) -> dict[int, list[Member]]:
    """The shards already in ``target``: number -> its members. Any other file there (but
    classes.txt) stops: pack writes into a folder of its own."""
    shards: dict[int, list[Member]] = {}
    for path in visible(target) if target.exists() else []:
        number = SHARD_NAME.match(path.name)
        if number is None and path.name != CLASSES_FILE:
            raise CurateError(f"{target}: holds {path.name}, which curate pack did not write")
        if number is not None:
            shards[int(number.group(1))] = list(scan_tar(path))
    return shards


def images_of(members: list[Member]) -> list[str]:
    return [member.name for member in members if is_image_name(member.name)]


def unchanged(shard: Path, members: list[Member], folder: Folder) -> bool:
    """Whether the shard holds exactly its samples' current members, byte for byte."""
    paths = images_of(members)
    expected = [name for path in paths for name in (path, f"{json_key(path)}.json")]
    if [member.name for member in members] != expected:
        return False
    wanted = (data for path in paths for _, data in folder.members(path))
    with open(shard, "rb") as handle:
        return all(
            os.pread(handle.fileno(), member.size, member.offset) == data
            for member, data in zip(members, wanted, strict=True)
        )


def samples(paths: list[str], folder: Folder, progress: tqdm) -> Iterator[list[tuple[str, bytes]]]:
    """Each sample's members, read once."""
    for path in paths:
        yield list(folder.members(path))
        progress.update()


def rewrite_shard(target: Path, paths: list[str], folder: Folder, progress: tqdm) -> None:
    with atomic_path(target) as temp, open(temp, "wb") as handle:
        write_tar(handle, (member for sample in samples(paths, folder, progress) for member in sample))


def new_shards(
    target: Path, first: int, paths: list[str], folder: Folder, limit: int, progress: tqdm
) -> list[str]:
    """``paths`` in order into shards numbered from ``first``, each closed before the sample that
    would take it past ``limit`` bytes (a bigger sample alone); their names."""
    pending = samples(paths, folder, progress)
    sample = next(pending, None)
    names: list[str] = []
    while sample is not None:
        names.append(SHARD.format(first + len(names)))

        def members() -> Iterator[tuple[str, bytes]]:
            nonlocal sample
            size = 0
            while sample is not None and (size == 0 or size + footprint(sample) <= limit):
                size += footprint(sample)
                yield from sample
                sample = next(pending, None)

        with atomic_path(target / names[-1]) as temp, open(temp, "wb") as handle:
            write_tar(handle, members())
    return names


def footprint(sample: list[tuple[str, bytes]]) -> int:
    """The bytes a sample takes in a shard: a header and padded data per member (a PAX name aside)."""
    return sum(BLOCK + len(data) + padding(len(data)) for _, data in sample)


def pack(source: Path, target: Path, shard_mb: float, follow_symlinks: bool = False) -> Packed:
    """Bring the shards in ``target`` to the folder ``source``'s images (see the module docstring)."""
    if target.resolve().is_relative_to(source.resolve()):
        raise CurateError(f"{target}: inside the folder it packs ({source}); pack into a folder beside it")
    folder, skipped = read_folder(source, follow_symlinks)
    shards = existing_shards(target)
    result = Packed(images=len(folder.paths), skipped=skipped)
    packed = {path for members in shards.values() for path in images_of(members)}
    progress = tqdm(total=len(folder.paths), desc="pack: images", unit="img", disable=None)
    for number, members in sorted(shards.items()):
        path, paths = target / SHARD.format(number), images_of(members)
        staying = [name for name in paths if name in folder.at]
        if not staying:
            path.unlink()
            result.removed.append(path.name)
        elif staying == paths and unchanged(path, members, folder):
            result.kept.append(path.name)
            progress.update(len(paths))
        else:
            rewrite_shard(path, staying, folder, progress)
            result.rewritten.append(path.name)
    unpacked = [path for path in folder.paths if path not in packed]
    first = max(shards, default=-1) + 1
    result.new = new_shards(target, first, unpacked, folder, int(shard_mb * 2**20), progress)
    progress.close()
    classes = "".join(f"{name}\n" for name in folder.class_names)
    if not (target / CLASSES_FILE).exists() or (target / CLASSES_FILE).read_text(encoding="utf-8") != classes:
        write_text(target / CLASSES_FILE, classes)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="curate pack", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an ImageFolder (<class>/<image>, optional metadata.csv)")
    parser.add_argument("target", type=Path, help="the folder of shards to write or bring up to date")
    parser.add_argument(
        "--shard-mb",
        type=float,
        default=DEFAULT_SHARD_MB,
        help=f"MiB per shard, about (default {DEFAULT_SHARD_MB})",
    )
    parser.add_argument(
        "--follow-symlinks", action="store_true", help="also pack symlinks that point outside the folder"
    )
    args = parser.parse_args(argv)
    if args.shard_mb <= 0:
        parser.error("--shard-mb must be positive")
    result = pack(args.source, args.target, args.shard_mb, args.follow_symlinks)
    shards = len(result.kept) + len(result.rewritten) + len(result.new)
    print(
        f"curate pack: {result.images:,} images in {shards} shards in {args.target} ({len(result.new)} new, "
        f"{len(result.rewritten)} rewritten, {len(result.kept)} unchanged, {len(result.removed)} removed); "
        f"{result.skipped} files left out (not images, outside class folders, symlinks out)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(guarded(main))

"""Bring your own data: read an ImageFolder (one subfolder per class) plus optional metadata.csv.

Layout::

    <source>/<class name>/**/<image>.{png,jpg,jpeg,webp,bmp}
    <source>/metadata.csv      optional: path (relative to <source>), group, split

Images of any size and mode are resized to ``image.size`` and converted to
``image.channels``. Unreadable files are collected (``on_bad_image: skip``) or
stop the stage (``fail``) with the file named.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from curate.dataset import content_ids, stratified_test_mask
from curate.errors import CurateError
from curate.imaging import conform

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
METADATA_FILE = "metadata.csv"
DEFAULT_GROUP = "all"


@dataclass
class FolderData:
    images: np.ndarray
    samples: pd.DataFrame
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    source_sizes: Counter = field(default_factory=Counter)  # (width, height) -> count
    source_modes: Counter = field(default_factory=Counter)  # PIL mode -> count


def read_image_folder(
    source: Path, *, size: int, channels: int, on_bad_image: str, test_fraction: float, seed: int
) -> FolderData:
    if not source.is_dir():
        raise CurateError(f"ingest.source: {str(source)!r} is not a folder")
    class_dirs = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise CurateError(f"{source}: no class subfolders (expected <source>/<class>/<image>)")
    files = [
        (class_dir.name, path.relative_to(source).as_posix(), path)
        for class_dir in class_dirs
        for path in sorted(class_dir.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(source).parts)
    ]
    if not files:
        raise CurateError(f"{source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")

    data = FolderData(images=np.empty(0), samples=pd.DataFrame())
    pictures, payloads, rows = [], [], []
    for class_name, relative, path in tqdm(files, desc="ingest: reading images", unit="img"):
        payload = path.read_bytes()
        try:
            with Image.open(io.BytesIO(payload)) as image:
                image.load()
                data.source_sizes[image.size] += 1
                data.source_modes[image.mode] += 1
                pictures.append(conform(image, size, channels))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            reason = _describe_failure(exc)
            if on_bad_image == "fail":
                raise CurateError(f"{source / relative}: unreadable image ({reason})") from None
            data.bad_files.append((relative, reason))
            continue
        payloads.append(payload)
        rows.append({"path": relative, "label_name": class_name})
    if not rows:
        raise CurateError(f"{source}: every image is unreadable")

    samples = pd.DataFrame(rows)
    names = sorted(samples["label_name"].unique())
    samples["label"] = samples["label_name"].map({name: i for i, name in enumerate(names)})
    samples.insert(0, "sample_id", content_ids(payloads))
    samples["row"] = np.arange(len(samples))
    samples = _apply_metadata(samples, source / METADATA_FILE)
    unassigned = samples["split"] == ""
    strata = samples["group"] + ":" + samples["label_name"]
    is_test = stratified_test_mask(strata[unassigned], test_fraction, seed)
    samples.loc[unassigned, "split"] = np.where(is_test, "test", "train")

    data.images = np.stack(pictures)
    data.samples = samples[["sample_id", "path", "row", "label", "label_name", "group", "split"]]
    return data


def _describe_failure(exc: Exception) -> str:
    """A short, run-independent reason (PIL's messages can embed object addresses)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    message = re.sub(r"<[^<>]* at 0x[0-9a-f]+>", "data", str(exc)).splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}".rstrip(": ")


def _apply_metadata(samples: pd.DataFrame, metadata_path: Path) -> pd.DataFrame:
    """Join the optional metadata.csv on ``path``; fill ``group`` and ``split`` defaults."""
    samples = samples.assign(group=DEFAULT_GROUP, split="")
    if not metadata_path.exists():
        return samples
    try:
        metadata = pd.read_csv(metadata_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CurateError(f"{metadata_path}: not a readable CSV ({exc})".splitlines()[0]) from None
    if "path" not in metadata.columns:
        raise CurateError(f"{metadata_path}: missing column 'path'")
    duplicated = metadata["path"][metadata["path"].duplicated()]
    if len(duplicated):
        raise CurateError(f"{metadata_path}: path {duplicated.iloc[0]!r} is listed twice")
    # Line numbers as a user sees them in an editor: the header is line 1.
    metadata.index = metadata.index + 2
    by_path = metadata.set_index("path")
    unknown = sorted(set(by_path.index) - set(samples["path"]))
    if unknown:
        raise CurateError(f"{metadata_path}: path {unknown[0]!r} matches no readable image")
    if "group" in by_path.columns:
        groups = samples["path"].map(by_path["group"]).fillna("")
        samples["group"] = groups.where(groups != "", DEFAULT_GROUP)
    if "split" in by_path.columns:
        split = samples["path"].map(by_path["split"]).fillna("")
        bad = metadata[~metadata["split"].isin(["train", "test", ""])]
        if len(bad):
            line = bad.index[0]
            value = bad["split"].iloc[0]
            raise CurateError(f"{metadata_path} line {line}: split {value!r} is not 'train' or 'test'")
        samples["split"] = split
    return samples

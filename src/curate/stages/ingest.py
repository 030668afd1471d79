"""ingest: source images -> ``data/raw/images/`` (a pixel store) + ``data/raw/samples.parquet`` + report.

The source is the embedded demo (``ingest.source: data/demo``), an ImageFolder, or a folder of
WebDataset tar shards or Parquet shards (:mod:`curate.data.shards`); the images are decoded over
``ingest.workers`` processes and streamed into the store segment by segment
(:mod:`curate.data.store`): memory does not grow with the number of images.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from curate.data import demo
from curate.data.catalog import (
    NOT_AN_IMAGE,
    OUTSIDE_CLASSES,
    SKIP_REASONS,
    SYMLINK_OUTSIDE,
    UNREADABLE,
    SourceData,
)
from curate.data.folder import read_image_folder
from curate.data.image_rows import read_images, write_images
from curate.data.lineage import Lineage
from curate.data.paths import RAW_IMAGES, RAW_SAMPLES
from curate.data.polarity import light_background
from curate.data.samples import class_names_of, write_samples
from curate.data.shards import FOLDER, read_shards, source_form
from curate.data.store import Store
from curate.params import DEMO_SOURCE, Params, load_params
from curate.report import Verdict, bar_chart, thumbnail
from curate.report.writer import write_stage
from curate.stage import Stage, guarded, stage_parser

STAGE = Stage(
    "ingest",
    metrics=("n_train",),
    view="data",
)

THUMBS_PER_CELL = 8
POLARITY_CHUNK = 4096  # rows read at a time when counting light backgrounds
MIN_TRAIN_PER_CLASS = 10
MAX_LISTED = 200  # skipped files listed one by one in the report; the counts cover them all
SKIP_WARNINGS = {
    UNREADABLE: "{n} unreadable file(s) skipped (see Details)",
    NOT_AN_IMAGE: "{n} file(s) in class folders are not images, skipped (see Details)",
    SYMLINK_OUTSIDE: "{n} symlink(s) to outside the source folder refused (ingest.follow_symlinks: false)",
    OUTSIDE_CLASSES: "{n} file(s) outside any class folder ignored (see Details)",
}
RESCALE_HOW = {"dtype_range": "value / 257", "per_image": "each image's min..max stretched to 0..255"}
FLOAT_HOW = {
    "dtype_range": "0..1 times 255; another range stretched from its min..max",
    "per_image": "each image's min..max stretched to 0..255",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = stage_parser("ingest", __doc__).parse_args(argv)
    params = load_params(args.params)
    lineage = Lineage()
    result = compute(params, lineage.output(RAW_IMAGES))
    write_samples(lineage.output(RAW_SAMPLES), result.samples)
    sizes = write_stage(STAGE, params, metrics(result), report_context(params, result), lineage)
    print(f"ingest: {len(result.samples):,} samples; reports/ingest.html {sizes['html']:,} bytes")
    return 0


@dataclass(frozen=True)
class Ingested:
    """What ingest read (the table, the raw store, what was skipped and why) and its counts."""

    data: SourceData
    counts: dict[str, int]  # the stage's figures: n_train, n_test, n_classes, ...

    @property
    def samples(self) -> pd.DataFrame:
        return self.data.samples


def compute(params: Params, target: Path) -> Ingested:
    """The source's table and what was skipped and why, its pixels streamed into the raw store at
    ``target`` (opened for the report), and the counts. Not pure: it reads the source and writes
    the store a bounded batch at a time, so memory does not grow with the number of files."""
    data = read_source(params, target)
    return Ingested(data, _counts(data))


def read_source(params: Params, target: Path) -> SourceData:
    """The demo, or the source folder (an ImageFolder, tar shards or Parquet shards), read into the
    raw store at ``target``."""
    settings = params.ingest
    if settings.source == DEMO_SOURCE:
        images, samples = demo.build_demo(
            seed=params.seed,
            test_fraction=settings.test_fraction,
            label_noise=settings.demo.label_noise,
            minority_keep=settings.demo.minority_keep,
            subsample=settings.demo.subsample,
            noise=settings.demo.noise,
            size=params.image.size,
            channels=params.image.channels,
        )
        write_images(target, images, segment_mb=settings.segment_mb)  # keys: table order, row = position
        return SourceData(images=read_images(target), samples=samples)
    source = Path(settings.source)
    form = source_form(source)
    if form == FOLDER:
        return read_image_folder(source, params.image, settings, params.seed, target)
    return read_shards(source, form, params.image, settings, params.seed, target)


def metrics(result: Ingested) -> dict[str, int]:
    return result.counts


def _counts(data: SourceData) -> dict[str, int]:
    """``n_skipped`` counts every file left out, ``n_bad_images`` the unreadable ones."""
    samples = data.samples
    return {
        "n_train": int((samples["split"] == "train").sum()),
        "n_test": int((samples["split"] == "test").sum()),
        "n_classes": int(samples["label"].nunique()),
        "n_groups": int(samples["group"].nunique()),
        "n_bad_images": data.n_skipped(UNREADABLE),
        "n_skipped": data.n_skipped(),
        "n_16bit": data.n_16bit,
        "n_multiframe": data.n_multiframe,
        "n_unlisted": data.n_unlisted,
    }


def report_context(params: Params, result: Ingested) -> dict[str, object]:
    data, samples = result.data, result.samples
    class_names = class_names_of(samples)
    groups = sorted(samples["group"].unique())
    counts = samples.groupby(["label_name", "group", "split"]).size()
    columns = [(group, split) for group in groups for split in ("train", "test")]
    count_rows = [
        [name, *(int(counts.get((name, g, s), 0)) for g, s in columns), int(counts.get(name).sum())]
        for name in class_names
    ]
    train = samples[samples["split"] == "train"]
    train_counts = train.groupby(["label_name", "group"]).size()
    chart = bar_chart(
        class_names,
        {g: [int(train_counts.get((n, g), 0)) for n in class_names] for g in groups},
        key="ingest-counts",
        ylabel="train samples",
        title="Train samples by class and group",
    )
    return {
        "source": params.ingest.source,
        "is_demo": params.ingest.source == DEMO_SOURCE,
        "demo": params.ingest.demo,
        "image": params.image,
        "verdict": _verdict(data, class_names),
        "headline": list(result.counts.items()),
        "count_headers": ["class", *(f"{g} {s}" for g, s in columns), "total"],
        "count_rows": count_rows,
        "chart": chart,
        "thumbnails": _thumbnail_rows(data.images, train, class_names, groups),
        "source_sizes": [(f"{w} x {h}", n) for (w, h), n in data.source_sizes.most_common(10)],
        "source_modes": sorted(data.source_modes.items()),
        "conversions": _conversions(params, data),
        "skipped_counts": [
            (reason, data.n_skipped(reason)) for reason in SKIP_REASONS if data.n_skipped(reason)
        ],
        "skipped": [list(entry) for entry in data.skipped[:MAX_LISTED]],
        "skipped_more": max(0, len(data.skipped) - MAX_LISTED),
        "polarity": _polarity(params, data),
        "noise_by_group": _noise_by_group(samples),
    }


def _verdict(data: SourceData, class_names: list[str]) -> Verdict:
    verdict = Verdict()
    for reason, warning in SKIP_WARNINGS.items():
        if data.n_skipped(reason):
            verdict.warnings.append(warning.format(n=data.n_skipped(reason)))
    if data.n_multiframe:
        verdict.warnings.append(f"{data.n_multiframe} multi-frame file(s): only the first frame is used")
    if data.n_unlisted:
        verdict.warnings.append(
            f"{data.n_unlisted} image(s) not listed in metadata.csv (or with an empty group) "
            f"put in group {data.default_group} (ingest.unlisted: default_group)"
        )
    train = data.samples[data.samples["split"] == "train"]
    per_class = train["label_name"].value_counts()
    for name in class_names:
        if per_class.get(name, 0) < MIN_TRAIN_PER_CLASS:
            verdict.warnings.append(
                f"class {name} has {per_class.get(name, 0)} train samples (fewer than {MIN_TRAIN_PER_CLASS})"
            )
    return verdict


def _conversions(params: Params, data: SourceData) -> list[list]:
    """What ingest changed beyond resizing: bit depth, frames, default group (count, how)."""
    rescale = params.ingest.rescale_16bit
    rows = [
        [
            "16-bit images scaled to 8 bits",
            data.n_16bit,
            f"{RESCALE_HOW[rescale]} (ingest.rescale_16bit: {rescale})",
        ],
        ["float images scaled to 8 bits", data.n_float, FLOAT_HOW[rescale]],
        ["multi-frame files", data.n_multiframe, "first frame kept"],
        ["images in the default group", data.n_unlisted, "not listed in metadata.csv, or an empty group"],
    ]
    return [row for row in rows if row[1]]


def _polarity(params: Params, data: SourceData) -> dict[str, object]:
    """How many images ``image.normalize_polarity: auto`` inverts before the models see them, by group."""
    if params.image.normalize_polarity == "off":
        return {"summary": "n/a (off)", "rows": []}
    if params.image.channels != 1:
        return {"summary": "n/a (RGB images are never inverted)", "rows": []}
    images = data.images
    in_store = np.concatenate(
        [
            light_background(images[start : start + POLARITY_CHUNK])
            for start in range(0, len(images), POLARITY_CHUNK)
        ]
        or [np.zeros(0, dtype=bool)]
    )
    light = pd.Series(in_store[data.samples["row"].to_numpy()], index=data.samples.index)
    by_group = light.groupby(data.samples["group"])
    rows = [[group, len(flags), int(flags.sum())] for group, flags in by_group]
    return {"summary": f"{int(light.sum()):,} of {len(light):,} (light background)", "rows": rows}


def _thumbnail_rows(
    images: Store, train: pd.DataFrame, class_names: list[str], groups: list[str]
) -> list[dict]:
    """The first few train samples of each class x group, as captioned thumbnails."""
    rows = []
    for name in class_names:
        for group in groups:
            cell = train[(train["label_name"] == name) & (train["group"] == group)].head(THUMBS_PER_CELL)
            if len(cell):
                rows.append(
                    {
                        "label": f"{name} / {group}",
                        "items": [
                            {"uri": thumbnail(images[row]), "caption": path.rsplit("/", 1)[-1], "title": path}
                            for row, path in zip(cell["row"], cell["path"], strict=True)
                        ],
                    }
                )
    return rows


def _noise_by_group(samples: pd.DataFrame) -> list[list]:
    """Demo only: injected label flips per group of the train split."""
    if "true_label" not in samples.columns:
        return []
    train = samples[samples["split"] == "train"]
    flipped = (train["label"] != train["true_label"]).groupby(train["group"])
    return [[group, int(flips.sum()), len(flips), float(flips.mean())] for group, flips in flipped]


if __name__ == "__main__":
    sys.exit(guarded(main))

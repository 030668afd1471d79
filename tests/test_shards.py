"""Sharded sources: the same images give the same store and samples.parquet as an ImageFolder,
as WebDataset tars (``curate pack``) and as Parquet written by Hugging Face ``datasets``; one
worker and two give the same bytes; each broken shard stops with one line naming it (exit 2)
and leaves nothing half-written, or is listed in the report as a broken file is."""

from __future__ import annotations

import io
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curate import cli
from curate.data import decoding
from curate.data.folder import list_image_folder
from curate.data.samples import read_samples
from curate.data.tars import write_tar
from curate.people.pack import pack
from curate.report.render import read_figures
from tests.conftest import file_or_tree_bytes, set_params
from tests.test_ingest import make_folder

SIZE = 16
STORE = ("data/raw/images", "data/raw/samples.parquet")
UNLISTED = {"dog/3.png", "dog/4.png"}  # not in metadata.csv: ingest.unlisted: default_group


def png(value: int, size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    pixels = (np.arange(size[0] * size[1] * 3).reshape(size[1], size[0], 3) + value) % 256
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def make_source(root: Path) -> Path:
    """tests/test_ingest's folder (RGB, RGBA and grayscale of several sizes, a subfolder, a
    broken file, a text file, the same bytes in two classes) and an upper-case ``.JPG`` with a
    dot in its name, a third class, metadata.csv with groups, a split and an extra column."""
    make_folder(root)
    Image.new("RGB", (30, 20), (10, 200, 30)).save(root / "cat" / "IMG.2024.JPG", "JPEG")
    for i in range(3):
        (root / "bird" / "x").mkdir(parents=True, exist_ok=True)
        (root / "bird" / "x" / f"{i}.png").write_bytes(png(40 * i, (8 + i, 12)))
    listing = list_image_folder(root, False)
    rows = ["path,group,split,site"] + [
        f"{path},{'indoor' if i % 2 else 'outdoor'},{'test' if i % 5 == 0 else ''},site{i % 3}"
        for i, (_, path, _) in enumerate(listing.files)
        if path not in UNLISTED
    ]
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def write_parquet(folder: Path, target: Path) -> None:
    """The folder as ``datasets`` writes it: Image and ClassLabel features, the metadata as
    columns (None where unlisted), in two files whose rows are in no particular order."""
    import datasets  # slow to import: only the tests that write Parquet pay for it

    listing = list_image_folder(folder, False)
    names = sorted(listing.classes)
    metadata = {
        line.split(",")[0]: line.split(",")[1:] for line in (folder / "metadata.csv").read_text().split()[1:]
    }
    rows = [
        {
            "image": {"bytes": Path(file).read_bytes(), "path": path},
            "label": names.index(name),
            **dict(zip(("group", "split", "site"), metadata.get(path, [None] * 3), strict=True)),
        }
        for name, path, file in listing.files
    ]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=names),
            **{column: datasets.Value("string") for column in ("group", "split", "site")},
        }
    )
    target.mkdir(parents=True)
    half = len(rows) // 2
    for part, chunk in enumerate((rows[half:], rows[:half][::-1])):
        columns = {key: [row[key] for row in chunk] for key in chunk[0]}
        datasets.Dataset.from_dict(columns, features=features).to_parquet(target / f"part-{part:05d}.parquet")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """The folder, its tars (``curate pack``, small shards) and its Parquet files."""
    root = tmp_path_factory.mktemp("sources")
    make_source(root / "folder")
    pack(root / "folder", root / "tars", shard_mb=0.004)
    write_parquet(root / "folder", root / "parquet")
    return root


def ingested(workdir: Path, source: Path, workers: int = 1, **ingest) -> dict[str, bytes]:
    set_params(
        workdir / "params.yaml",
        image={"size": SIZE, "channels": 3},
        ingest={
            "source": str(source),
            "unlisted": "default_group",
            "extra_columns": ["site"],
            "workers": workers,
        }
        | ingest,
    )
    assert cli.main(["ingest"]) == 0
    return {name: file_or_tree_bytes(workdir / name) for name in STORE}


def test_three_forms_give_the_same_store_and_table(workdir, sources, monkeypatch):
    # Tasks of two images: two workers pass a dozen through the pool's sliding window.
    monkeypatch.setattr(decoding, "MAX_CHUNK", 2)
    folder = ingested(workdir, sources / "folder")
    samples = read_samples(workdir / "data/raw/samples.parquet").set_index("path")
    assert len(list((sources / "tars").glob("*.tar"))) > 3  # several shards, keys across them
    assert ingested(workdir, sources / "tars", workers=2) == folder
    assert ingested(workdir, sources / "tars", workers=1) == folder
    assert ingested(workdir, sources / "parquet", workers=2) == folder
    assert ingested(workdir, sources / "parquet", workers=1) == folder
    # What the folder gave, so equality means something: groups, the listed split, the extra
    # column, the default group, the skipped broken file, the odd name, three classes.
    listed = pd.read_csv(sources / "folder" / "metadata.csv", dtype=str, keep_default_na=False)
    listed = listed.set_index("path").loc[samples.index.drop(sorted(UNLISTED))]
    assert (samples.loc[listed.index, ["group", "site"]] == listed[["group", "site"]]).all().all()
    assert (samples.loc[listed.index[listed["split"] == "test"], "split"] == "test").all()
    assert (samples.loc[sorted(UNLISTED), "group"] == "unlisted").all()
    assert "cat/IMG.2024.JPG" in samples.index and "cat/broken.png" not in samples.index
    assert sorted(samples["label_name"].unique()) == ["bird", "cat", "dog"]
    assert read_figures("ingest", workdir / "reports")["n_train"] == (samples["split"] == "train").sum()


def test_a_broken_image_in_a_shard_is_skipped_as_in_a_folder(workdir, sources):
    ingested(workdir, sources / "tars")
    markdown = (workdir / "reports/ingest.md").read_text()
    assert "| cat/broken.png | unreadable | OSError: Truncated File Read |" in markdown
    assert read_figures("ingest", workdir / "reports")["n_bad_images"] == 1


def test_parquet_split_from_the_file_name(workdir, sources):
    """train-* rows are train, test-* and validation-* rows test (held out as test is)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = workdir / "hf"
    shards.mkdir()
    files = sorted((sources / "parquet").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(file) for file in files]).drop_columns(["split"])
    thirds = np.array_split(np.arange(table.num_rows), 3)
    for name, rows in zip(("train", "test", "validation"), thirds, strict=True):
        pq.write_table(table.take(rows), shards / f"{name}-00000-of-00001.parquet")
    ingested(workdir, shards, extra_columns=[])
    samples = read_samples(workdir / "data/raw/samples.parquet").set_index("path")
    paths = table.column("image").combine_chunks().field("path").to_pylist()
    expected = ["train"] * len(thirds[0]) + ["test"] * (len(thirds[1]) + len(thirds[2]))
    readable = [i for i, path in enumerate(paths) if path in samples.index]
    assert samples.loc[[paths[i] for i in readable], "split"].tolist() == [expected[i] for i in readable]


def tar_of(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        write_tar(handle, iter(members))
    return path


FIELD = {int: "cls", str: "json"}


def samples_of(label: str | int, count: int, prefix: str = "") -> list[tuple[str, bytes]]:
    """``count`` samples labelled by a ``.cls`` (an int) or a ``.json`` (a name)."""
    members = []
    for i in range(count):
        key = f"{prefix}{label}-{i:03d}"
        text = f'{{"label": "{label}"}}' if isinstance(label, str) else str(label)
        members += [
            (f"{key}.png", png(zlib.crc32(key.encode()) % 200)),
            (f"{key}.{FIELD[type(label)]}", text.encode()),
        ]
    return members


def test_cls_labels_name_classes_from_classes_txt_or_as_integers(workdir):
    tar_of(workdir / "wds" / "a.tar", samples_of(0, 12) + samples_of(1, 12))
    ingested(workdir, workdir / "wds", extra_columns=[])
    samples = read_samples(workdir / "data/raw/samples.parquet")
    assert dict(zip(samples["label"], samples["label_name"], strict=True)) == {0: "0", 1: "1"}
    (workdir / "wds" / "classes.txt").write_text("zebra\napple\n")  # its order, not sorted
    ingested(workdir, workdir / "wds", extra_columns=[])
    samples = read_samples(workdir / "data/raw/samples.parquet")
    assert dict(zip(samples["label"], samples["label_name"], strict=True)) == {0: "zebra", 1: "apple"}


# --- broken shards: one line naming the shard, exit 2, nothing written -------------------

GOOD = samples_of("a", 6) + samples_of("b", 6)


def good_shard_beside(name: str, text: str):
    """A case: a good shard with the file ``name`` holding ``text`` beside it."""

    def make(root: Path) -> None:
        tar_of(root / "wds" / "s.tar", GOOD)
        (root / "wds" / name).write_text(text)

    return make


def _truncated(root: Path) -> None:
    shard = tar_of(root / "wds" / "s.tar", GOOD)
    shard.write_bytes(shard.read_bytes()[:2000])


def _leaving(name: str):
    return lambda root: tar_of(
        root / "wds" / "s.tar", [*GOOD, (name, png(1)), (name[:-3] + "json", b'{"label":"a"}')]
    )


def _parquet_without_label(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "wds").mkdir()
    pq.write_table(pa.table({"image": [png(1), png(2)], "tag": ["a", "b"]}), root / "wds" / "train-0.parquet")


CASES = {
    "truncated tar": (_truncated, "wds/s.tar: truncated"),
    "member leaving the shard": (
        _leaving("../x.png"),
        "wds/s.tar: member '../x.png' is not a path inside the shard",
    ),
    "absolute member": (_leaving("/x.png"), "wds/s.tar: member '/x.png' is not a path inside the shard"),
    "empty file": (
        lambda root: (tar_of(root / "wds" / "s.tar", GOOD).parent / "t.tar").write_bytes(b""),
        "wds/t.tar: an empty file",
    ),
    "no member": (lambda root: tar_of(root / "wds" / "s.tar", []), "wds/s.tar: an empty shard"),
    "key twice in a shard": (
        lambda root: tar_of(root / "wds" / "s.tar", [*GOOD, ("a-000.jpg", png(3))]),
        "wds/s.tar: key 'a-000' twice",
    ),
    "member twice": (
        lambda root: tar_of(root / "wds" / "s.tar", [*GOOD, GOOD[0]]),
        "wds/s.tar: member 'a-000.png' is in the shard twice",
    ),
    "key twice across shards": (
        lambda root: (tar_of(root / "wds" / "s.tar", GOOD), tar_of(root / "wds" / "t.tar", GOOD[:2])),
        "key 'a-000' twice: s.tar: a-000.png and t.tar: a-000.png",
    ),
    "cls out of range": (
        lambda root: (
            tar_of(root / "wds" / "s.tar", samples_of(0, 6) + samples_of(2, 6)),
            (root / "wds/classes.txt").write_text("a\nb\n"),
        ),
        "wds/s.tar: 2-000.png: label 2 is not one of classes 0..1",
    ),
    "json without label": (
        lambda root: tar_of(
            root / "wds" / "s.tar", [*GOOD, ("c.png", png(4)), ("c.json", b'{"group": "g"}')]
        ),
        "wds/s.tar: key 'c' has no label",
    ),
    "not an image, on_bad_image fail": (
        lambda root: (
            tar_of(root / "wds" / "s.tar", [*GOOD, ("c.png", b"not a png"), ("c.cls", b"0")]),
            set_params(root / "params.yaml", ingest={"on_bad_image": "fail"}),
        ),
        "wds/s.tar: c.png: unreadable image (not a recognised image format)",
    ),
    "compressed tar": (
        lambda root: (root / "wds").mkdir() or (root / "wds" / "s.tar.gz").write_bytes(b"\x1f\x8b"),
        "wds/s.tar.gz: a compressed tar",
    ),
    "gzip named .tar": (
        lambda root: (
            (root / "wds").mkdir() or (root / "wds" / "s.tar").write_bytes(b"\x1f\x8b\x08" + bytes(600))
        ),
        "wds/s.tar: a gzip-compressed tar",
    ),
    "not a tar": (
        lambda root: (root / "wds").mkdir() or (root / "wds" / "s.tar").write_bytes(b"hello" * 300),
        "wds/s.tar: not a tar, or damaged",
    ),
    "tars and parquet": (
        lambda root: (tar_of(root / "wds" / "s.tar", GOOD), (root / "wds" / "p.parquet").write_bytes(b"")),
        "wds: holds tar shards (s.tar) and Parquet shards (p.parquet)",
    ),
    "tars and a subfolder": (
        lambda root: (tar_of(root / "wds" / "s.tar", GOOD), (root / "wds" / "cat").mkdir()),
        "wds: holds class subfolders (cat) and tar shards (s.tar)",
    ),
    "parquet without a label column": (_parquet_without_label, "wds/train-0.parquet: no label column"),
    "a class without an image": (
        good_shard_beside("classes.txt", "a\nb\nc\n"),
        "wds: class 'c' (from classes.txt) has no readable image",
    ),
    "one class": (
        lambda root: tar_of(root / "wds" / "s.tar", samples_of("a", 6)),
        "wds: classes 'a'; a classifier",
    ),
    "metadata path matching no sample": (
        good_shard_beside("metadata.csv", "path\nz.png\n"),
        "wds/metadata.csv line 2: path 'z.png' matches no sample in the shards",
    ),
    "not a parquet file": (
        lambda root: (root / "wds").mkdir() or (root / "wds" / "p.parquet").write_bytes(b"PAR1"),
        "wds/p.parquet: not a readable Parquet file",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_broken_shard_stops_with_one_line(workdir, capsys, case):
    build, message = CASES[case]
    set_params(workdir / "params.yaml", image={"size": SIZE}, ingest={"source": "wds"})
    build(workdir)
    before = {path for path in workdir.rglob("*")}
    assert cli.main(["ingest"]) == 2
    stderr = capsys.readouterr().err.splitlines()
    assert len(stderr) == 1 and message in stderr[0], stderr
    assert not (workdir / "data" / "raw").exists()  # nothing half-written
    assert {path for path in workdir.rglob("*")} == before  # nothing extracted, nothing else written


def test_tar_members_are_never_extracted(workdir):
    """A good shard whose member names have folders: ingest writes only its outputs."""
    tar_of(workdir / "wds" / "s.tar", [(f"d/{name}", data) for name, data in GOOD])
    before = {path for path in workdir.rglob("*")}
    ingested(workdir, workdir / "wds", extra_columns=[])
    written = {path.relative_to(workdir) for path in set(workdir.rglob("*")) - before}
    assert all(
        path.parts[:2] == ("data", "raw") or path.parts[0] == "reports" for path in written - {Path("data")}
    )
    assert read_samples(workdir / "data/raw/samples.parquet")["path"].iloc[0] == "d/a-000.png"


def test_the_source_is_left_as_it_was(workdir, sources):
    copy = workdir / "tars"
    shutil.copytree(sources / "tars", copy)
    before = file_or_tree_bytes(copy)
    ingested(workdir, copy)
    assert file_or_tree_bytes(copy) == before

"""The segmented pixel store: stable content-defined segments, deterministic bytes, one reader
across segments, byte-identical parallel ingest, and broken files named in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curate.data import store
from curate.data.image_rows import read_images, write_images
from curate.data.samples import read_samples, write_samples
from curate.errors import CurateError
from curate.stages import ingest
from tests.conftest import file_or_tree_bytes, set_params

SHAPE = (4, 4, 1)


def rows_for(keys: list[str]) -> np.ndarray:
    """One image per key whose pixels derive from the key: the same key, the same image."""
    seeds = [store.key_hash(key) for key in keys]
    return np.stack([np.random.default_rng(s).integers(0, 256, SHAPE, dtype=np.uint8) for s in seeds])


def build(folder, keys: list[str], target: int = 8) -> dict[str, bytes]:
    """A store of ``keys`` (sorted), cut on the keys; its segment files by name."""
    keys = sorted(keys)
    store.write_store(folder, rows_for(keys), np.arange(len(keys)), keys, target)
    return {p.name: p.read_bytes() for p in folder.glob("*.npy")}


KEYS = [f"img{i:05d}.jpg" for i in range(0, 4000, 2)]


def test_an_insertion_rewrites_only_the_segment_it_lands_in(tmp_path):
    before = build(tmp_path / "a", KEYS)
    assert len(before) > 20
    inserted = build(tmp_path / "b", [*KEYS, "img01001.jpg", "img01003.jpg"])  # two rows, one place
    assert len(set(inserted) - set(before)) <= 2 and len(set(before) - set(inserted)) <= 2
    appended = build(tmp_path / "c", [*KEYS, *(f"img{i:05d}.jpg" for i in range(4000, 4040))])
    assert set(before) - set(appended) <= {
        json.loads((tmp_path / "a/index.json").read_text())["segments"][-1]["name"]
    }
    deleted = build(tmp_path / "d", [key for key in KEYS if not "img02000" <= key < "img02040"])
    assert len(set(deleted) - set(before)) <= 2


def test_segments_stay_between_a_quarter_and_four_times_the_target(tmp_path):
    build(tmp_path / "s", KEYS, target=8)
    counts = [s["rows"] for s in json.loads((tmp_path / "s/index.json").read_text())["segments"]]
    assert max(counts) <= 32 and min(counts[:-1]) >= 2 and sum(counts) == len(KEYS)


def test_same_rows_same_bytes_from_scratch_and_after_edits(tmp_path):
    scratch = build(tmp_path / "scratch", KEYS)
    edited = tmp_path / "edited"
    build(edited, KEYS[:500])
    build(edited, [*KEYS[:700], "zzz.jpg"])
    assert build(edited, KEYS) == scratch
    assert (edited / "index.json").read_bytes() == (tmp_path / "scratch/index.json").read_bytes()
    assert sorted(p.name for p in edited.iterdir()) == sorted([*scratch, "index.json"])


def test_reading_across_segments_in_any_order(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "OPEN_SEGMENTS", 2)  # a reader keeps a bounded number of maps open
    images = np.random.default_rng(0).integers(0, 256, (50, *SHAPE), dtype=np.uint8)
    order = np.random.default_rng(1).permutation(50)
    rows = write_images(tmp_path / "s", images, order=order, segment_mb=40 / (1 << 20))
    opened = read_images(tmp_path / "s")
    assert len(opened.names) > 3 and len(opened) == 50
    np.testing.assert_array_equal(opened[rows], images)  # each image at the row it was given
    picks = np.array([49, 0, 7, 7, 31, 2])
    np.testing.assert_array_equal(opened[picks], images[order][picks])
    np.testing.assert_array_equal(opened[10:20], images[order][10:20])
    np.testing.assert_array_equal(opened[-1], images[order][-1])
    assert len(opened._maps) == 2


def make_photos(root, n: int = 40) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("cat" if i % 2 else "dog") / ("sub" if i % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i:03d}.jpg", quality=80)


def test_parallel_ingest_writes_the_same_bytes_as_one_worker(workdir, capsys):
    make_photos(workdir / "photos")
    outputs = ["data/raw/images", "data/raw/samples.parquet", "reports/ingest.md"]
    results = []
    for workers in (1, 3):
        set_params(
            workdir / "params.yaml", ingest={"source": "photos", "workers": workers, "segment_mb": 0.01}
        )
        assert ingest.main([]) == 0
        results.append({name: file_or_tree_bytes(workdir / name) for name in outputs})
    assert results[0] == results[1]
    samples = read_samples(workdir / "data/raw/samples.parquet")
    assert samples["path"].tolist() == sorted(samples["path"], key=lambda p: p.split("/"))
    images = read_images(workdir / "data/raw/images")
    assert len(images.names) > 1
    source = (
        Image.open(workdir / "photos" / samples["path"][3]).convert("RGB").resize((28, 28), Image.BILINEAR)
    )
    assert np.abs(images[int(samples["row"][3])].astype(int) - np.asarray(source)).mean() < 40


def test_a_relabel_moves_no_pixels(workdir):
    make_photos(workdir / "photos")
    set_params(workdir / "params.yaml", ingest={"source": "photos", "segment_mb": 0.01})
    assert ingest.main([]) == 0
    before = {p.name for p in (workdir / "data/raw/images").glob("*.npy")}
    (workdir / "photos/cat/p001.jpg").rename(workdir / "photos/dog/p001.jpg")
    assert ingest.main([]) == 0
    assert {p.name for p in (workdir / "data/raw/images").glob("*.npy")} == before


def test_an_append_keeps_the_split_of_the_files_already_there(workdir):
    make_photos(workdir / "photos", n=80)
    set_params(workdir / "params.yaml", ingest={"source": "photos", "segment_mb": 0.01})
    assert ingest.main([]) == 0
    before = read_samples(workdir / "data/raw/samples.parquet").set_index("path")["split"]
    rng = np.random.default_rng(1)
    for i in range(80, 88):  # 4 new files in each class
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(workdir / "photos" / ("cat" if i % 2 else "dog") / f"p{i:03d}.jpg")
    assert ingest.main([]) == 0
    after = read_samples(workdir / "data/raw/samples.parquet").set_index("path")["split"]
    moved = before[before != after.loc[before.index]]
    assert len(moved) <= 2 * (4 + 1), moved  # at most k + 1 per class x group
    assert (after == "test").sum() == 22  # round(0.25 * 44) in each class


# --- broken files: one line naming the file and the stage to re-run, exit 2 ----------------------


@pytest.fixture
def raw_store(workdir):
    write_images(
        workdir / "data/raw/images", np.zeros((30, *SHAPE), dtype=np.uint8), segment_mb=40 / (1 << 20)
    )
    return workdir / "data/raw/images"


def first_segment(folder):
    return folder / json.loads((folder / "index.json").read_text())["segments"][0]["name"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: (s / "index.json").unlink(), r"index.json: missing"),
        (lambda s: (s / "index.json").write_text("{not json"), r"index.json: not a store index"),
        (lambda s: first_segment(s).unlink(), r"\.npy: segment not found"),
        (
            lambda s: first_segment(s).write_bytes(first_segment(s).read_bytes()[:-5]),
            r"\.npy: segment of .*truncated",
        ),
    ],
)
def test_a_broken_store_is_named_with_the_stage_to_rerun(raw_store, damage, message):
    damage(raw_store)
    with pytest.raises(CurateError, match=f"{message}.*re-run the ingest stage"):
        read_images(raw_store)


def test_a_garbled_segment_is_named_when_read(raw_store):
    segment = first_segment(raw_store)
    segment.write_bytes(b"\0" * segment.stat().st_size)  # right size, no npy header
    with pytest.raises(CurateError, match=r"\.npy: not a readable segment.*re-run the ingest stage"):
        read_images(raw_store)[0]


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_a_broken_sample_table_is_named_with_the_stage_to_rerun(workdir, damage):
    table = workdir / "data/balanced/samples.parquet"
    table.parent.mkdir(parents=True)
    pd.DataFrame({"sample_id": ["a"], "path": ["x"], "row": [0]}).to_parquet(table)
    if damage == "truncated":
        table.write_bytes(table.read_bytes()[:-20])
    elif damage == "garbage":
        table.write_bytes(b"PAR1 this is not parquet")
    elif damage == "missing":
        table.unlink()
    with pytest.raises(
        CurateError, match=r"data/balanced/samples.parquet: .*(re-run|run) the rebalance stage"
    ):
        read_samples(table)


def one_line_exit_2(module: str) -> str:
    run = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    return run.stderr


def test_stages_on_broken_inputs_exit_2_with_one_line(raw_store):
    table = pd.DataFrame(
        {"sample_id": ["a", "b"], "path": ["x", "y"], "row": [0, 1], "label": [0, 1]}
        | {"label_name": ["0", "1"], "group": ["g", "g"], "split": ["train", "train"]}
    )
    write_samples(raw_store.parent / "samples.parquet", table)
    segment = first_segment(raw_store)
    segment.write_bytes(segment.read_bytes()[:100])
    assert f"{segment.relative_to(raw_store.parent.parent.parent)}: segment of 100 bytes" in one_line_exit_2(
        "curate.stages.folds"
    )
    balanced = raw_store.parent.parent / "balanced/samples.parquet"
    balanced.parent.mkdir()
    balanced.write_bytes(b"garbage")
    stderr = one_line_exit_2("curate.stages.augment")
    assert "data/balanced/samples.parquet: not a readable sample table" in stderr
    assert "re-run the rebalance stage" in stderr


def test_another_revisions_store_reads_only_the_segments_asked_for(tmp_path):
    images = rows_for([str(i) for i in range(30)])
    write_images(tmp_path / "images", images, segment_mb=40 / (1 << 20))
    asked = []

    def read(path):
        asked.append(path.name)
        return path.read_bytes() if path.exists() else None

    rows = store.RevisionRows.open(read, tmp_path / "images")
    assert len(rows) == 30 and (rows[17] == images[17]).all() and (rows[0] == images[0]).all()
    assert len(asked) == 3  # the index and two segments
    assert store.RevisionRows.open(read, tmp_path / "elsewhere") is None
    first_segment(tmp_path / "images").unlink()
    with pytest.raises(CurateError, match="segment not found"):
        store.RevisionRows.open(read, tmp_path / "images")[0]

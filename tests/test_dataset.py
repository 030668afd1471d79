import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from curate.data.atomic import atomic_path, write_array
from curate.data.image_rows import image_rows, read_images, write_images
from curate.data.samples import class_names_of, content_ids, read_samples, write_samples
from curate.data.splits import keyed_test_mask, stratified_test_mask, training_rows
from curate.errors import CurateError


def table(n=4):
    return pd.DataFrame(
        {
            "sample_id": [f"id{i}" for i in range(n)],
            "path": [f"c/{i}.png" for i in range(n)],
            "row": range(n),
            "label": [i % 2 for i in range(n)],
            "label_name": ["a" if i % 2 == 0 else "b" for i in range(n)],
            "group": "all",
            "split": "train",
        }
    )


def test_images_round_trip_is_memory_mapped(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 7, 7, 3), dtype=np.uint8)
    write_images(tmp_path / "images", images, segment_mb=0.0002)  # 1 to 16 rows per segment
    loaded = read_images(tmp_path / "images")
    assert len(loaded.names) > 1 and loaded.shape == images.shape
    np.testing.assert_array_equal(np.asarray(loaded), images)
    assert isinstance(loaded._segment(0), np.memmap)


def test_write_images_rejects_wrong_layout(tmp_path):
    with pytest.raises(ValueError):
        write_images(tmp_path / "x.npy", np.zeros((2, 3, 3), dtype=np.uint8))
    with pytest.raises(ValueError):
        write_images(tmp_path / "x.npy", np.zeros((2, 3, 3, 1), dtype=np.float32))
    assert not list(tmp_path.iterdir())


def test_samples_round_trip_and_same_bytes(tmp_path):
    write_samples(tmp_path / "a.parquet", table())
    write_samples(tmp_path / "b.parquet", table())
    pd.testing.assert_frame_equal(read_samples(tmp_path / "a.parquet"), table())
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_samples_need_core_columns_and_unique_ids(tmp_path):
    with pytest.raises(ValueError, match="core columns"):
        write_samples(tmp_path / "s.parquet", table().drop(columns="group"))
    duplicated = table()
    duplicated.loc[1, "sample_id"] = "id0"
    with pytest.raises(ValueError, match="duplicate"):
        write_samples(tmp_path / "s.parquet", duplicated)
    assert not (tmp_path / "s.parquet").exists()


def test_missing_input_is_a_user_error(tmp_path):
    with pytest.raises(CurateError, match="not found"):
        read_samples(tmp_path / "nope.parquet")
    with pytest.raises(CurateError, match="not found"):
        read_images(tmp_path / "nope.npy")


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_content_ids_are_stable_and_unique():
    ids = content_ids([b"x", b"y", b"x", b"x"])
    assert len(set(ids)) == 4
    assert ids[2] == ids[0] + "-1" and ids[3] == ids[0] + "-2"
    assert content_ids([b"y"]) == [ids[1]]


def test_class_names_follow_label_order():
    frame = pd.DataFrame({"label": [1, 0, 1], "label_name": ["dog", "cat", "dog"]})
    assert class_names_of(frame) == ["cat", "dog"]


def test_stratified_mask_per_stratum_and_seeded():
    strata = ["a"] * 8 + ["b"] * 4 + ["c"]
    mask = stratified_test_mask(strata, 0.25, seed=3)
    assert mask[:8].sum() == 2 and mask[8:12].sum() == 1 and not mask[12]
    np.testing.assert_array_equal(mask, stratified_test_mask(strata, 0.25, seed=3))
    other_seeds = [stratified_test_mask(strata, 0.25, seed=s) for s in range(10)]
    assert any(not np.array_equal(mask, other) for other in other_seeds)


def test_keyed_mask_per_stratum_seeded_and_stable_as_data_grows():
    strata = ["a"] * 80 + ["b"] * 40 + ["c"]
    keys = [f"IMG_{i:05d}.jpg" for i in range(len(strata))]
    mask = keyed_test_mask(strata, keys, 0.25, seed=3)
    assert mask[:80].sum() == 20 and mask[80:120].sum() == 10 and not mask[120]
    np.testing.assert_array_equal(mask, keyed_test_mask(strata, keys, 0.25, seed=3))
    assert not np.array_equal(mask, keyed_test_mask(strata, keys, 0.25, seed=4))
    # A row's split follows its key, not its position: the same rows shuffled keep theirs.
    order = np.random.default_rng(0).permutation(len(keys))
    shuffled = keyed_test_mask([strata[i] for i in order], [keys[i] for i in order], 0.25, seed=3)
    np.testing.assert_array_equal(shuffled, mask[order])
    # 8 new rows in stratum a move at most 8 + 1 of its old rows; b's rows keep their split.
    grown = keyed_test_mask(strata + ["a"] * 8, keys + [f"NEW_{i}.jpg" for i in range(8)], 0.25, seed=3)
    assert (grown[:80] != mask[:80]).sum() <= 9
    np.testing.assert_array_equal(grown[80:121], mask[80:121])
    # where a permutation of the stratum deals every row anew
    permuted = stratified_test_mask(strata, 0.25, seed=3)
    assert (stratified_test_mask(strata + ["a"] * 8, 0.25, seed=3)[:80] != permuted[:80]).sum() > 9


def test_image_rows_read_each_rows_store_in_table_order(tmp_path):
    raw = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2, 1)
    write_images(tmp_path / "raw.npy", raw)
    write_images(tmp_path / "aug.npy", raw + 100)
    samples = pd.DataFrame({"row": [3, 0, 1, 4], "store": ["raw", "augmented", "raw", "raw"]})
    stores = {"raw": tmp_path / "raw.npy", "augmented": tmp_path / "aug.npy"}
    assert image_rows(samples, stores).read()[:, 0, 0, 0].tolist() == [12, 100, 4, 16]
    assert image_rows(samples.drop(columns="store").iloc[:1], stores).read()[0, 0, 0, 0] == 12


def test_training_rows_skip_test_and_dropped():
    frame = table().assign(action=["none", "drop", "relabel", "keep"])
    frame.loc[3, "split"] = "test"
    assert training_rows(frame)["sample_id"].tolist() == ["id0", "id2"]


def test_a_killed_writer_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    # The writer dies inside atomic_path: no finally runs, as under SIGKILL or an OOM kill.
    killed = (
        "import os, sys\n"
        "from curate.data.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os._exit(9)\n"
    )
    target = tmp_path / "images.npy"
    assert subprocess.run([sys.executable, "-c", killed, str(target)]).returncode == 9
    (leftover,) = tmp_path.glob(".images.npy.*.tmp")
    # Other targets' temp files, live or not, are not this write's to remove.
    others = [".samples.parquet.k3j_x9a2.tmp", ".images.npy.old.k3j_x9a2.tmp", "images.npy.tmp"]
    for name in others:
        (tmp_path / name).write_bytes(b"")
    write_array(target, np.zeros((1, 2, 2, 1), dtype=np.uint8))
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*others, "images.npy"])


def test_read_json_names_the_stage_to_rerun(tmp_path):
    from curate.data.inputs import read_json

    path = tmp_path / "models" / "train.json"
    path.parent.mkdir()
    with pytest.raises(CurateError, match=r"train.json: not found \(run the train stage first: dvc repro\)"):
        read_json(path)
    path.write_text("{truncated")
    with pytest.raises(CurateError, match=r"train.json: not readable as JSON \(.*\); re-run the train stage"):
        read_json(path)
    path.write_text('{"a": 1}')
    assert read_json(path) == {"a": 1}


def test_messages_name_the_stage_that_writes_the_file(tmp_path):
    # One map of folders: each stage writes into its own, train the model evaluate reads.
    from curate.data.paths import producer_of

    assert producer_of("data/clean/samples.parquet") == "clean"
    assert producer_of(tmp_path / "data/folds/embedder.pt") == "folds"
    assert producer_of("data/raw/images/index.json") == producer_of("data/raw/images") == "ingest"
    assert producer_of("elsewhere/samples.parquet") == "upstream"
    assert producer_of("models/model.pt") == producer_of("models/train.json") == "train"
    assert producer_of("data/augmented/images") == "augment"

import numpy as np
import pytest
from PIL import Image

from curate.data.image_rows import read_images
from curate.data.samples import read_samples
from curate.errors import CurateError
from curate.report.render import read_figures
from curate.stages import ingest
from tests.conftest import file_or_tree_bytes, set_params

RAW = "data/raw"
OUTPUTS = [
    "data/raw/images",
    "data/raw/samples.parquet",
    "reports/ingest.html",
    "reports/ingest.md",
    "reports/metrics/ingest.json",
    "reports/details/ingest.json",
]


def outputs_bytes(root):
    return {name: file_or_tree_bytes(root / name) for name in OUTPUTS}


# The tests that take it are one xdist_group, so one worker builds it once (not once per worker).
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One ingest of the default demo, shared by the demo tests (it takes seconds)."""
    import os
    import shutil

    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("demo")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert ingest.main([]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.mark.xdist_group("ingest_demo_run")
def test_demo_counts(demo_run):
    samples = read_samples(demo_run / RAW / "samples.parquet")
    images = read_images(demo_run / RAW / "images")
    assert images.shape == (len(samples), 28, 28, 1)
    counts = samples.groupby(["group", "split"]).size()
    # 25% of each group x class stratum is test; 10% of sklearn's train kept.
    assert counts["mnist", "test"] == 1250 and counts["mnist", "train"] == 3750
    assert counts["sklearn", "test"] == pytest.approx(450, abs=5)
    assert counts["sklearn", "train"] == pytest.approx(135, abs=6)
    assert samples["sample_id"].is_unique
    assert (samples["row"] == np.arange(len(samples))).all()
    assert samples["path"].iloc[0] == "mnist/00000"


@pytest.mark.xdist_group("ingest_demo_run")
def test_demo_noise_in_train_only_with_true_label_kept(demo_run):
    samples = read_samples(demo_run / RAW / "samples.parquet")
    flipped = samples["label"] != samples["true_label"]
    train = samples["split"] == "train"
    assert not flipped[~train].any()
    assert flipped[train].sum() == round(0.10 * train.sum())
    assert (samples["label_name"] == samples["label"].astype(str)).all()


@pytest.mark.xdist_group("ingest_demo_run")
def test_demo_groups_look_different(demo_run):
    samples = read_samples(demo_run / RAW / "samples.parquet")
    images = read_images(demo_run / RAW / "images")
    mean_by_group = {g: images[rows.index].mean() for g, rows in samples.groupby("group")}
    assert mean_by_group["mnist"] < 60 < 190 < mean_by_group["sklearn"]  # light paper


@pytest.mark.xdist_group("ingest_demo_run")
def test_demo_metrics_and_reports(demo_run):

    metrics = read_figures("ingest", demo_run / "reports")
    samples = read_samples(demo_run / RAW / "samples.parquet")
    assert metrics == {
        "n_train": int((samples["split"] == "train").sum()),
        "n_test": int((samples["split"] == "test").sum()),
        "n_classes": 10,
        "n_groups": 2,
        "n_bad_images": 0,
        "n_skipped": 0,
        "n_16bit": 0,
        "n_multiframe": 0,
        "n_unlisted": 0,
    }
    html = (demo_run / "reports/ingest.html").read_text()
    assert html.count("data:image/png;base64,") >= 10 * 2 * 8
    assert "<svg" in html
    # image.normalize_polarity: auto inverts the sklearn group (dark ink on light paper) only.
    sklearn = int((samples["group"] == "sklearn").sum())
    markdown = (demo_run / "reports/ingest.md").read_text()
    assert f"Images the models see inverted: {sklearn:,} of {len(samples):,} (light background)." in markdown
    assert f"| mnist | {int((samples['group'] == 'mnist').sum()):,} | 0 |" in markdown
    assert f"| sklearn | {sklearn:,} | {sklearn:,} |" in markdown


def test_demo_is_deterministic_and_seeded(demo_run, workdir):
    assert ingest.main([]) == 0
    assert outputs_bytes(workdir) == outputs_bytes(demo_run)
    set_params(workdir / "params.yaml", seed=1)
    assert ingest.main([]) == 0
    other = read_samples(workdir / RAW / "samples.parquet")
    first = read_samples(demo_run / RAW / "samples.parquet")
    assert set(other["sample_id"][other["split"] == "test"]) != set(
        first["sample_id"][first["split"] == "test"]
    )


def test_oracle_run_keeps_the_same_samples(demo_run, workdir):
    set_params(workdir / "params.yaml", ingest={"demo": {"label_noise": 0.0}})
    assert ingest.main([]) == 0
    oracle = read_samples(workdir / RAW / "samples.parquet")
    noisy = read_samples(demo_run / RAW / "samples.parquet")
    assert oracle["sample_id"].tolist() == noisy["sample_id"].tolist()
    assert (oracle["label"] == oracle["true_label"]).all()
    assert (oracle["true_label"] == noisy["true_label"]).all()


def test_demo_as_rgb_at_another_size(workdir):
    set_params(workdir / "params.yaml", image={"size": 32, "channels": 3})
    assert ingest.main([]) == 0
    images = np.asarray(read_images(workdir / RAW / "images"))
    assert images.shape[1:] == (32, 32, 3)
    assert (images[..., 0] == images[..., 2]).all()


# --- bring your own data -------------------------------------------------------------


def save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_folder(root):
    """An ImageFolder: RGB, RGBA and grayscale images of mixed sizes, and one corrupt file."""
    rng = np.random.default_rng(0)
    for cls, base in (("cat", 40), ("dog", 200)):
        for i in range(6):
            size = (20 + 7 * i, 30 + 3 * i)
            pixels = np.clip(base + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            save(root / cls / f"{i}.png", Image.fromarray(pixels))
        save(root / cls / "gray.jpg", Image.new("L", (50, 40), color=base))
    save(root / "dog" / "nested" / "alpha.png", Image.new("RGBA", (16, 16), (0, 0, 0, 0)))
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "cat" / "notes.txt").write_text("ignored")
    # Identical bytes in two classes: two distinct ids.
    (root / "dog" / "copy.png").write_bytes((root / "cat" / "0.png").read_bytes())


def test_image_folder_with_metadata_and_corrupt_file(workdir):
    source = workdir / "images"
    make_folder(source)
    rows = ["path,group,split"] + [f"cat/{i}.png,{'indoor' if i < 3 else 'outdoor'},test" for i in range(2)]
    (source / "metadata.csv").write_text("\n".join(rows) + "\n")
    set_params(
        workdir / "params.yaml",
        image={"channels": 3},
        ingest={"source": "images", "unlisted": "default_group"},
    )
    assert ingest.main([]) == 0

    samples = read_samples(workdir / RAW / "samples.parquet").set_index("path")
    images = np.asarray(read_images(workdir / RAW / "images"))
    assert images.shape == (len(samples), 28, 28, 3)
    assert "cat/broken.png" not in samples.index and "cat/notes.txt" not in samples.index
    assert len(samples) == 16
    assert samples.loc["cat/0.png", "group"] == "indoor"
    assert samples.loc["cat/0.png", "split"] == "test"
    assert samples.loc["dog/3.png", "group"] == "unlisted"  # not in metadata.csv
    assert set(samples["split"]) == {"train", "test"}
    assert samples["sample_id"].is_unique
    assert samples.loc["dog/copy.png", "sample_id"].startswith(samples.loc["cat/0.png", "sample_id"])
    assert samples.loc["dog/copy.png", "label_name"] == "dog"
    assert (images[samples.loc["dog/nested/alpha.png", "row"]] == 255).all()  # alpha on white

    metrics = read_figures("ingest", workdir / "reports")
    assert metrics["n_bad_images"] == 1 and metrics["n_skipped"] == 2 and metrics["n_unlisted"] == 14
    html = (workdir / "reports/ingest.html").read_text()
    assert "cat/broken.png" in html and "50 x 40" in html
    markdown = (workdir / "reports/ingest.md").read_text()
    assert "| cat/broken.png | unreadable | OSError: Truncated File Read |" in markdown
    assert "| cat/notes.txt | not an image |  |" in markdown
    assert (
        "- 14 image(s) not listed in metadata.csv (or with an empty group) put in group unlisted" in markdown
    )
    assert "Images the models see inverted: n/a (RGB images are never inverted)." in markdown


def test_moved_file_keeps_its_id_and_shows_relabelled(workdir):
    source = workdir / "images"
    make_folder(source)
    set_params(workdir / "params.yaml", ingest={"source": "images"})
    assert ingest.main([]) == 0
    before = read_samples(workdir / RAW / "samples.parquet").set_index("sample_id")
    (source / "cat" / "3.png").rename(source / "dog" / "moved.png")
    assert ingest.main([]) == 0
    after = read_samples(workdir / RAW / "samples.parquet").set_index("sample_id")
    moved = before.index[before["path"] == "cat/3.png"][0]
    assert after.loc[moved, "path"] == "dog/moved.png"
    assert after.loc[moved, "label_name"] == "dog" and before.loc[moved, "label_name"] == "cat"
    assert set(after.index) == set(before.index)


def test_bad_image_fail_mode_names_file_and_writes_nothing(workdir):
    make_folder(workdir / "images")
    set_params(workdir / "params.yaml", ingest={"source": "images", "on_bad_image": "fail"})
    with pytest.raises(CurateError, match=r"images/cat/broken.png: unreadable image"):
        ingest.main([])
    assert not (workdir / "data" / "raw").exists()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("group\nx\n", "missing column 'path'"),
        ("path\ncat/zzz.png\n", "line 2: path 'cat/zzz.png' matches no file in the class folders"),
        ("path,split\ncat/0.png,train\ncat/1.png,val\n", "line 3: split 'val' is not 'train' or 'test'"),
        ("path\ncat/0.png\ncat/0.png\n", "path 'cat/0.png' is listed twice"),
    ],
)
def test_metadata_errors_name_the_fault(workdir, metadata, message):
    make_folder(workdir / "images")
    (workdir / "images" / "metadata.csv").write_text(metadata)
    set_params(workdir / "params.yaml", ingest={"source": "images"})
    with pytest.raises(CurateError, match="metadata.csv") as caught:
        ingest.main([])
    assert message in str(caught.value)


def test_source_errors(workdir):
    set_params(workdir / "params.yaml", ingest={"source": "missing"})
    with pytest.raises(CurateError, match="ingest.source: 'missing' is not a folder"):
        ingest.main([])
    (workdir / "empty").mkdir()
    set_params(workdir / "params.yaml", ingest={"source": "empty"})
    with pytest.raises(CurateError, match="no class subfolders"):
        ingest.main([])


def test_demo_subsample_keeps_a_stratified_fraction(workdir):
    set_params(workdir / "params.yaml", ingest={"demo": {"subsample": 0.1}})
    assert ingest.main([]) == 0
    samples = read_samples(workdir / RAW / "samples.parquet")
    assert 430 <= len(samples) <= 600
    assert set(samples["group"]) == {"mnist", "sklearn"} and samples["label"].nunique() == 10


def test_polarity_off_is_reported_as_such(workdir):
    set_params(
        workdir / "params.yaml", image={"normalize_polarity": "off"}, ingest={"demo": {"subsample": 0.1}}
    )
    assert ingest.main([]) == 0
    markdown = (workdir / "reports/ingest.md").read_text()
    assert "## Ink polarity (image.normalize_polarity: off)" in markdown
    assert "Images the models see inverted: n/a (off)." in markdown

import json

import numpy as np
import pytest
import torch
from PIL import Image

from curate.checkpoint import load_checkpoint
from curate.dataset import read_samples
from curate.errors import CurateError
from curate.stages import clean, ingest
from tests.conftest import set_params

CLEAN_OUTPUTS = [
    "data/clean/samples.parquet",
    "data/clean/pred_probs.npy",
    "data/clean/embeddings.npy",
    "reports/clean.html",
    "reports/clean.md",
    "reports/metrics/clean.json",
]


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    """ingest + clean on a third of the demo (10% flipped labels), 3 folds of 12 epochs."""
    import os
    import shutil

    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("clean")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    set_params(
        root / "params.yaml",
        ingest={"demo": {"subsample": 0.3}},
        clean={"folds": 3, "epochs": 12, "batch_size": 64},
    )
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert ingest.main([]) == 0
        assert clean.main([]) == 0
    finally:
        os.chdir(cwd)
    return root


def test_detects_known_flips(cleaned):
    metrics = json.loads((cleaned / "reports/metrics/clean.json").read_text())
    assert metrics["detect_precision"] >= 0.8
    assert metrics["detect_recall"] >= 0.8
    assert metrics["detect_f1"] >= 0.8
    samples = read_samples(cleaned / "data/clean/samples.parquet")
    train = samples[samples["split"] == "train"]
    assert metrics["flagged"] == train["is_label_issue"].sum()
    assert set(metrics["detect_recall_by_group"]) == {"mnist", "sklearn"}


def test_outputs_follow_the_contract(cleaned):
    samples = read_samples(cleaned / "data/clean/samples.parquet")
    raw = read_samples(cleaned / "data/raw/samples.parquet")
    assert samples["sample_id"].tolist() == raw["sample_id"].tolist()
    train, test = samples[samples["split"] == "train"], samples[samples["split"] == "test"]
    # The test split is never cleaned.
    assert (test["action"] == "none").all() and not test["is_label_issue"].any()
    assert (test["label"] == raw.loc[test.index, "label"]).all()
    # Default action drops flagged rows; labels of kept rows are untouched.
    assert set(train.loc[train["is_label_issue"], "action"]) <= {"drop", "keep"}
    assert (train["given_label"] == raw.loc[train.index, "label"]).all()
    probs = np.load(cleaned / "data/clean/pred_probs.npy")
    assert probs.shape == (len(train), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert (train["pred_row"].to_numpy() == np.arange(len(train))).all()
    assert set(train["fold"]) == {0, 1, 2}
    assert (train["predicted_label"] == probs.argmax(axis=1)).all()
    model, meta = load_checkpoint(cleaned / "data/clean/embedder.pt")
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert isinstance(model, torch.nn.Module)


def test_report_shows_flagged_thumbnails(cleaned):
    html = (cleaned / "reports/clean.html").read_text()
    assert html.count("data:image/png;base64,") >= 20
    assert "Given vs predicted" in html and "By group" in html
    assert "By group" in (cleaned / "reports/clean.md").read_text()


def test_same_seed_same_bytes(cleaned, workdir):
    import shutil

    shutil.copy(cleaned / "params.yaml", workdir / "params.yaml")
    shutil.copytree(cleaned / "data/raw", workdir / "data/raw")
    assert clean.main([]) == 0
    for name in CLEAN_OUTPUTS:
        assert (workdir / name).read_bytes() == (cleaned / name).read_bytes(), name


def test_relabel_mode_and_cap(cleaned, workdir):
    import shutil

    shutil.copy(cleaned / "params.yaml", workdir / "params.yaml")
    shutil.copytree(cleaned / "data/raw", workdir / "data/raw")
    set_params(
        workdir / "params.yaml",
        clean={"action": "relabel", "relabel_min_confidence": 0.6, "max_drop_fraction": 0.01},
    )
    assert clean.main([]) == 0
    samples = read_samples(workdir / "data/clean/samples.parquet")
    relabelled = samples[samples["action"] == "relabel"]
    assert len(relabelled) > 0
    assert (relabelled["label"] == relabelled["predicted_label"]).all()
    assert (relabelled["label"] != relabelled["given_label"]).all()
    assert (relabelled["label_name"] == relabelled["label"].astype(str)).all()
    train = samples[samples["split"] == "train"]
    dropped = train[train["action"] == "drop"]
    for _, part in train.groupby("label"):
        assert (part["action"] == "drop").sum() <= int(0.01 * len(part))
    assert len(dropped) <= int(0.01 * len(train))
    assert "max_drop_fraction 0.01 bound" in (workdir / "reports/clean.md").read_text()


def test_class_smaller_than_folds_is_named(workdir):
    for cls, n in (("many", 8), ("rare", 2)):
        (workdir / "src" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (12, 12), color=10 * i).save(workdir / "src" / cls / f"{i}.png")
    set_params(workdir / "params.yaml", ingest={"source": "src", "test_fraction": 0.01}, clean={"folds": 3})
    assert ingest.main([]) == 0
    with pytest.raises(CurateError, match="clean.folds: class 'rare' has 2 train sample"):
        clean.main([])
    assert not (workdir / "data/clean").exists()


def test_missing_device_is_named(cleaned, workdir):
    import shutil

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    shutil.copy(cleaned / "params.yaml", workdir / "params.yaml")
    shutil.copytree(cleaned / "data/raw", workdir / "data/raw")
    set_params(workdir / "params.yaml", clean={"device": "cuda"})
    with pytest.raises(CurateError, match=r"params.yaml: clean.device = 'cuda', but .* no cuda"):
        clean.main([])
    assert not (workdir / "data/clean").exists()

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from curate.data.samples import RawInputs, read_samples
from curate.errors import CurateError
from curate.learning.checkpoint import load_checkpoint
from curate.params import CleanParams, Params
from curate.report.render import read_figures
from curate.stages import clean, folds, ingest
from tests.conftest import set_params

CLEAN_OUTPUTS = [
    "data/clean/samples.parquet",
    "data/folds/pred_probs.npy",
    "data/folds/folds.npy",
    "data/folds/embeddings.npy",
    "data/folds/environment.json",
    "reports/clean.html",
    "reports/clean.md",
    "reports/metrics/clean.json",
    "reports/details/clean.json",
]


# The tests that take it are one xdist_group, so one worker builds it once (not once per worker).
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
        folds={"k": 3, "epochs": 12, "batch_size": 64, "min_steps": 0},
    )
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert ingest.main([]) == 0
        assert folds.main([]) == 0
        assert clean.main([]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.mark.xdist_group("clean_cleaned")
def test_detects_known_flips(cleaned):
    metrics = read_figures("clean", cleaned / "reports")
    assert metrics["detect_precision"] >= 0.8
    assert metrics["detect_recall"] >= 0.8
    assert metrics["detect_f1"] >= 0.8
    samples = read_samples(cleaned / "data/clean/samples.parquet")
    train = samples[samples["split"] == "train"]
    assert metrics["flagged"] == train["is_label_issue"].sum()
    assert set(metrics["detect_recall_by_group"]) == {"mnist", "sklearn"}


@pytest.mark.xdist_group("clean_cleaned")
def test_outputs_follow_the_contract(cleaned):
    samples = read_samples(cleaned / "data/clean/samples.parquet")
    raw = read_samples(cleaned / "data/raw/samples.parquet")
    assert samples["sample_id"].tolist() == raw["sample_id"].tolist()
    train, test = samples[samples["split"] == "train"], samples[samples["split"] == "test"]
    # The test split is never cleaned.
    assert (test["action"] == "none").all() and not test["is_label_issue"].any()
    assert (test["label"] == raw.loc[test.index, "label"]).all()
    # The default action relabels flagged rows it is confident of and drops the others; the
    # labels of the rows it keeps as they are stay untouched.
    assert set(train.loc[train["is_label_issue"], "action"]) <= {"relabel", "drop", "keep"}
    relabelled = train[train["action"] == "relabel"]
    assert (relabelled["label"] == relabelled["predicted_label"]).all()
    unchanged = train[train["action"] != "relabel"]
    assert (unchanged["label"] == unchanged["given_label"]).all()
    assert relabelled["action_reason"].str.contains("confident-learning threshold").all()
    assert (train["given_label"] == raw.loc[train.index, "label"]).all()
    probs = np.load(cleaned / "data/folds/pred_probs.npy")
    assert probs.shape == (len(train), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert (train["pred_row"].to_numpy() == np.arange(len(train))).all()
    assert set(train["fold"]) == {0, 1, 2}
    assert (train["predicted_label"] == probs.argmax(axis=1)).all()
    model, meta = load_checkpoint(cleaned / "data/folds/embedder.pt")
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert isinstance(model, torch.nn.Module)


@pytest.mark.xdist_group("clean_cleaned")
def test_report_shows_flagged_thumbnails(cleaned):
    html = (cleaned / "reports/clean.html").read_text()
    assert html.count("data:image/png;base64,") >= 20
    assert "Given vs predicted" in html and "By group" in html
    assert "By group" in (cleaned / "reports/clean.md").read_text()


def test_same_seed_same_bytes(cleaned, workdir):
    import shutil

    shutil.copy(cleaned / "params.yaml", workdir / "params.yaml")
    shutil.copytree(cleaned / "data/raw", workdir / "data/raw")
    assert folds.main([]) == 0
    assert clean.main([]) == 0
    for name in CLEAN_OUTPUTS:
        assert (workdir / name).read_bytes() == (cleaned / name).read_bytes(), name


def test_relabel_mode_and_cap(cleaned, workdir):
    import shutil

    shutil.copy(cleaned / "params.yaml", workdir / "params.yaml")
    shutil.copytree(cleaned / "data/raw", workdir / "data/raw")
    # The folds' predictions are reused: acting on them otherwise trains nothing.
    shutil.copytree(cleaned / "data/folds", workdir / "data/folds")
    set_params(
        workdir / "params.yaml",
        clean={
            "action": "relabel",
            "relabel_min_confidence": 0.6,
            "max_drop_fraction": 0.01,
            "cap": "absolute",
        },
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
    set_params(workdir / "params.yaml", ingest={"source": "src", "test_fraction": 0.01}, folds={"k": 3})
    assert ingest.main([]) == 0
    with pytest.raises(CurateError, match="folds.k: class 'rare' has 2 train sample"):
        folds.main([])
    assert not (workdir / "data/folds").exists()


def test_missing_device_is_named(cleaned, workdir):
    import shutil

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    shutil.copy(cleaned / "params.yaml", workdir / "params.yaml")
    shutil.copytree(cleaned / "data/raw", workdir / "data/raw")
    set_params(workdir / "params.yaml", folds={"device": "cuda"})
    with pytest.raises(CurateError, match=r"params.yaml: folds.device = 'cuda', but .* no cuda"):
        folds.main([])
    assert not (workdir / "data/folds").exists()


NAMES = ["a", "b", "c"]
# Train rows whose given label is wrong: row -> (predicted label, confidence of that prediction).
FLIPS = {3: (1, 0.97), 8: (1, 0.85), 24: (2, 0.97), 29: (2, 0.85), 45: (0, 0.97), 50: (0, 0.85)}


def _table() -> pd.DataFrame:
    """20 train rows per class (10 per group, groups alternating) and 2 test rows per class."""
    rows = [(k, "train") for k in range(3) for _ in range(20)] + [
        (k, "test") for k in range(3) for _ in range(2)
    ]
    labels = np.array([label for label, _ in rows])
    true = labels.copy()
    for row, (predicted, _) in FLIPS.items():
        true[row] = predicted
    return pd.DataFrame(
        {
            "sample_id": [f"s{i:03d}" for i in range(len(rows))],
            "path": [f"img/{i}" for i in range(len(rows))],
            "row": np.arange(len(rows)),
            "label": labels,
            "label_name": [NAMES[k] for k in labels],
            "group": ["g1" if i % 2 else "g2" for i in range(len(rows))],
            "split": [split for _, split in rows],
            "true_label": true,
        }
    )


def _pred_probs(train: pd.DataFrame) -> np.ndarray:
    """Confident and right on the clean rows, confident in another class on the flipped ones."""
    probs = np.full((len(train), 3), 0.05)
    probs[np.arange(len(train)), train["label"].to_numpy()] = 0.9
    for row, (predicted, confidence) in FLIPS.items():
        probs[row] = (1 - confidence) / 2
        probs[row, predicted] = confidence
    return probs


def _checks(n: int, duplicate_set: dict[int, int] | None = None) -> pd.DataFrame:
    sets = np.full(n, -1)
    for row, set_id in (duplicate_set or {}).items():
        sets[row] = set_id
    return pd.DataFrame(
        {
            "is_near_duplicate": sets >= 0,
            "duplicate_set": sets,
            "is_outlier": np.arange(n) == 7,
            "outlier_score": np.linspace(1, 0.5, n),
        }
    )


def clean_rows(
    samples: pd.DataFrame, checks: pd.DataFrame, settings: CleanParams, decisions: pd.DataFrame | None = None
) -> clean.Cleaned:
    """clean's compute on a hand-made table: predictions from :func:`_pred_probs`, three folds,
    no embeddings; the images (for the report) all zeros."""
    train = samples[samples["split"] == "train"]
    images = np.zeros((len(samples), 8, 8, 1), dtype=np.uint8)
    inputs = RawInputs(samples, images, NAMES, ())
    predictions = clean.FoldOutputs(_pred_probs(train), np.arange(len(train)) % 3, None, [])
    return clean.compute(inputs, predictions, checks, settings, decisions)


def _clean_by_hand(**settings) -> clean.Cleaned:
    settings.setdefault("action", "drop")  # the drop mechanics; relabel's tests say so
    samples = _table()
    train = samples[samples["split"] == "train"]
    checks = _checks(len(train), settings.pop("duplicate_set", None))
    return clean_rows(samples, checks, CleanParams(**settings))


def test_clean_drops_flagged_rows_without_training():
    result = _clean_by_hand(max_drop_fraction=0.3)
    raw, out = _table(), result.samples
    assert out["sample_id"].tolist() == raw["sample_id"].tolist()
    train, test = result.train, out[out["split"] == "test"]
    assert sorted(train.index[train["is_label_issue"]]) == sorted(FLIPS)
    assert set(train.loc[list(FLIPS), "action"]) == {"drop"}
    assert (train.drop(index=list(FLIPS))["action"] == "none").all()
    assert (out["label"] == raw["label"]).all() and (out["given_label"] == raw["label"]).all()
    assert (train["pred_row"] == np.arange(len(train))).all()
    assert (train.loc[list(FLIPS), "predicted_label"] == [p for p, _ in FLIPS.values()]).all()
    # The test split is never cleaned.
    assert (test["action"] == "none").all() and not test["is_label_issue"].any()
    assert (test[["pred_row", "fold", "predicted_label", "duplicate_set"]] == -1).all().all()
    assert result.cap_notes == []
    figures = clean.metrics(result)
    assert (figures["flagged"], figures["dropped"], figures["relabelled"], figures["held_back"]) == (
        6,
        6,
        0,
        0,
    )
    assert figures["detect_precision"] == figures["detect_recall"] == 1.0
    assert figures["outliers"] == 1


def test_clean_relabels_only_confident_predictions():
    result = _clean_by_hand(action="relabel", relabel_min_confidence=0.9, max_drop_fraction=0.3)
    train = result.train
    confident = [row for row, (_, confidence) in FLIPS.items() if confidence >= 0.9]
    unsure = sorted(set(FLIPS) - set(confident))
    assert set(train.loc[confident, "action"]) == {"relabel"}
    assert set(train.loc[unsure, "action"]) == {"drop"}
    relabelled = train.loc[confident]
    assert (relabelled["label"] == relabelled["predicted_label"]).all()
    assert (relabelled["label"] != relabelled["given_label"]).all()
    assert relabelled["label_name"].tolist() == [NAMES[k] for k in relabelled["label"]]
    assert clean.metrics(result)["relabelled"] == len(confident)


def test_clean_caps_removals_by_class_and_group():
    result = _clean_by_hand(max_drop_fraction=0.05, cap="absolute")
    train = result.train
    dropped = train[train["action"] == "drop"]
    for column in ("label", "group"):
        counts = train[column].value_counts()
        for key, n in dropped[column].value_counts().items():
            assert n <= int(0.05 * counts[key])
    # Each group (30 train rows) may lose one row: the two most suspicious flips go first.
    assert len(dropped) == 2
    held_back = train[train["is_label_issue"] & (train["action"] != "drop")]
    assert set(held_back["action"]) == {"keep"}
    assert dropped["label_quality"].max() <= held_back["label_quality"].min()
    assert result.cap_notes and all("removal(s) held back" in note for note in result.cap_notes)


def test_clean_drops_all_but_the_best_near_duplicate():
    # Row 8 is a flip (low label quality), row 10 a clean row of the same set: row 8 goes.
    kept = _clean_by_hand(duplicate_set={8: 8, 10: 8}, action="keep")
    assert (kept.train.loc[[8, 10], "action"] == ["keep", "none"]).all()
    dropped = _clean_by_hand(duplicate_set={8: 8, 10: 8}, action="keep", drop_near_duplicates=True)
    assert (dropped.train.loc[[8, 10], "action"] == ["drop", "none"]).all()
    assert (dropped.train.loc[[8, 10], "duplicate_set"] == 8).all()
    assert "drop_candidate" not in dropped.samples.columns


def test_report_context_without_training():
    result = _clean_by_hand(max_drop_fraction=0.05, cap="absolute", duplicate_set={8: 8, 10: 8})
    context = clean.report_context(Params(clean=CleanParams(max_drop_fraction=0.05, cap="absolute")), result)
    assert len(context["suspicious"]) == 6 and context["n_duplicate_sets"] == 1
    assert [row[0] for row in context["matrix_rows"]] == NAMES
    assert sum(sum(row[1:]) for row in context["matrix_rows"]) == 6
    # What the cap did comes first, with its numbers; then where it bound.
    assert (
        context["verdict"]
        .warnings[0]
        .startswith("6 train rows flagged (10.0%): 2 removed, 0 relabelled, 4 held back ")
    )
    assert context["verdict"].warnings[1].startswith("max_drop_fraction 0.05 bound: ")
    assert len(context["outliers"]) == 1


def test_flags_of_fold_models_at_chance_are_not_acted_on():
    # Fold models that learnt nothing: near-uniform probabilities, their argmax at random.
    samples = _table()
    train = samples[samples["split"] == "train"]
    probs = np.random.default_rng(0).dirichlet(np.full(3, 50.0), size=len(train))
    inputs = RawInputs(samples, np.zeros((len(samples), 8, 8, 1), dtype=np.uint8), NAMES, ())
    predictions = clean.FoldOutputs(probs, np.arange(len(train)) % 3, None, [])
    settings = CleanParams(max_drop_fraction=1.0)
    result = clean.compute(inputs, predictions, _checks(len(train)), settings)
    flagged = result.train[result.train["is_label_issue"]]
    assert len(flagged) > 10 and set(flagged["action"]) == {"keep"} and result.held_back == 0
    assert result.choice.action == "keep" and result.fold_skill < settings.min_fold_skill
    assert flagged["action_reason"].str.contains("fold skill").all()
    context = clean.report_context(Params(clean=settings), result)
    assert " and none acted on: the fold models agree with the given labels" in context["verdict"].warnings[0]

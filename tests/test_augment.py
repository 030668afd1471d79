import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms import v2

from curate.curation import augment_plan, drift
from curate.curation import augmentation as aug
from curate.data.image_rows import image_rows, read_images, write_images
from curate.data.samples import read_samples, write_samples
from curate.errors import CurateError
from curate.learning.checkpoint import load_checkpoint, save_checkpoint
from curate.learning.networks import build_model
from curate.params import load_params
from curate.report.render import read_figures
from curate.stages import augment
from tests.conftest import file_or_tree_bytes, set_params

OUT = "data/augmented"
OUTPUTS = [
    "data/augmented/images",
    "data/augmented/samples.parquet",
    "reports/augment.html",
    "reports/augment.md",
    "reports/metrics/augment.json",
    "reports/details/augment.json",
]
AFFINE = [{"name": "RandomAffine", "args": {"degrees": 15, "translate": [0.1, 0.1]}}]


def make_inputs(root, channels=1, size=28, big=40, small=8, seed=0):
    """Raw images, a balanced table (two groups, test and dropped rows) and an embedder checkpoint.

    Group ``big`` has weight 0.9, group ``small`` the rest, so the train weights have mean 1.
    """
    rng = np.random.default_rng(seed)
    n_test, n_drop = 6, 2
    n = big + small + n_test + n_drop
    images = np.zeros((n, size, size, channels), dtype=np.uint8)
    images[:, size // 4 : 3 * size // 4, size // 3 : 2 * size // 3] = rng.integers(
        120, 256, (n, 1, 1, channels)
    )
    images += rng.integers(0, 30, images.shape, dtype=np.uint8)
    group = ["big"] * big + ["small"] * small + ["big"] * (n_test + n_drop)
    split = ["train"] * (big + small) + ["test"] * n_test + ["train"] * n_drop
    label = np.arange(n) % 3
    samples = pd.DataFrame(
        {
            "sample_id": [f"{i:016x}" for i in range(n)],
            "path": [f"{g}/{i:05d}" for i, g in enumerate(group)],
            "row": np.arange(n),
            "label": label,
            "label_name": [f"c{v}" for v in label],
            "group": group,
            "split": split,
            "action": ["none"] * (n - n_drop) + ["drop"] * n_drop,
            "copies": 1,
        }
    )
    weight = np.where(samples["group"] == "big", 0.9, (big + small - 0.9 * big) / small)
    samples["weight"] = np.where(samples["split"] == "train", weight, 1.0)
    write_images(root / "data/raw/images", images)
    write_samples(root / "data/balanced/samples.parquet", samples)
    torch.manual_seed(0)
    model = build_model("cnn", 3, channels, size)
    meta = {
        "name": "cnn",
        "n_classes": 3,
        "channels": channels,
        "size": size,
        "class_names": ["c0", "c1", "c2"],
    }
    save_checkpoint(root / "data/folds/embedder.pt", model, meta)
    return samples, images


def run(workdir, **augment_params):
    set_params(workdir / "params.yaml", augment=augment_params)
    assert augment.main([]) == 0
    return read_samples(workdir / OUT / "samples.parquet"), np.asarray(read_images(workdir / OUT / "images"))


def outputs_bytes(root):
    return {name: file_or_tree_bytes(root / name) for name in OUTPUTS}


# --- params -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transforms", "message"),
    [
        (
            [
                {"name": "RandomAffine", "args": {"degrees": 5}},
                {"name": "RandomErasing"},
                {"name": "RandomAfine"},
            ],
            "augment.transforms[2].name: unknown transform 'RandomAfine' (did you mean RandomAffine?)",
        ),
        (
            [{"name": "RandomErasing"}, {"name": "RandomRotation", "args": {"degree": 5}}],
            "augment.transforms[1].args: RandomRotation has no argument 'degree' (arguments: ",
        ),
        (
            [{"name": "RandomAffine", "args": {"degrees": 5, "translate": [2, 0]}}],
            "augment.transforms[0].args: RandomAffine(**args) fails: translation values should be between 0",
        ),
        ([{"name": "RandomAffine", "arg": {}}], "augment.transforms[0].arg: unknown key (did you mean "),
        (
            [{"name": "Compose", "args": {}}],
            "augment.transforms[0].args: Compose needs argument 'transforms'",
        ),
    ],
)
def test_params_validation_names_the_transform(workdir, transforms, message):
    set_params(workdir / "params.yaml", augment={"transforms": transforms})
    with pytest.raises(CurateError) as caught:
        augment_plan.build_pipeline(
            load_params("params.yaml"), "params.yaml"
        )  # values: when the stage builds them
    assert str(caught.value).startswith("params.yaml: " + message)
    assert "\n" not in str(caught.value)


def test_a_bad_transform_value_stops_the_stage_with_one_line(workdir):
    make_inputs(workdir)
    set_params(
        workdir / "params.yaml",
        augment={"transforms": [{"name": "RandomCrop", "args": {"padding": [1, 2, 3]}}]},
    )
    with pytest.raises(
        CurateError, match=r"^params.yaml: augment.transforms\[0\].args: RandomCrop\(\*\*args\) fails"
    ):
        augment.main([])
    assert not (workdir / OUT).exists()


def test_defaults_are_valid_and_match_params_yaml(workdir):
    from curate.params import Params

    assert load_params(workdir / "params.yaml").augment == Params().augment
    assert Params.model_validate({"augment": Params().augment.model_dump()}).augment == Params().augment


def test_transform_that_changes_the_image_fails_before_any_output(workdir):
    make_inputs(workdir)
    set_params(
        workdir / "params.yaml", augment={"transforms": [*AFFINE, {"name": "Resize", "args": {"size": 20}}]}
    )
    with pytest.raises(
        CurateError,
        match=r"augment.transforms\[1\]: Resize must keep a uint8 1x28x28 image"
        r".*\(leave size out: it is image.size\)$",
    ):
        augment.main([])
    assert not (workdir / OUT).exists() and not (workdir / "reports").exists()


# --- sizes follow image.size ---------------------------------------------------------------------

# What the recipe column held when params.yaml still said size: 28 (reports/augment.md before the
# size was left out): the recipe says what ran, so the text is the same.
RECIPE_AT_28 = '[{"args":{"ratio":[0.85,1.15],"scale":[0.7,1.0],"size":28},"name":"RandomResizedCrop"}]'


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_default_transforms_follow_image_size(workdir, size, channels):
    make_inputs(workdir, channels=channels, size=size, big=12, small=4)
    set_params(workdir / "params.yaml", image={"size": size, "channels": channels})
    table, new_images = run(workdir, copies=1, target="all")  # the template's transforms
    assert new_images.shape == (16, size, size, channels)
    recipes = table["recipe"].dropna().unique()
    assert list(recipes) == [RECIPE_AT_28.replace('"size":28', f'"size":{size}')]
    markdown = (workdir / "reports/augment.md").read_text()
    assert f"&#34;size&#34;: {size}" in markdown  # the steps table shows the arguments as applied
    if size == 28:
        assert recipes[0] == RECIPE_AT_28


def test_a_transform_with_its_own_size_keeps_it(workdir):
    make_inputs(workdir, size=32, big=6, small=2)
    set_params(workdir / "params.yaml", image={"size": 32})
    crop = {"name": "RandomCrop", "args": {"size": 32, "padding": 2}}
    table, new_images = run(workdir, transforms=[crop, {"name": "CenterCrop"}], copies=1, target="all")
    assert new_images.shape[1:] == (32, 32, 1)
    (steps,) = table["recipe"].dropna().unique()
    assert json.loads(steps) == [
        {"args": {"padding": 2, "size": 32}, "name": "RandomCrop"},
        {"args": {"size": 32}, "name": "CenterCrop"},
    ]


# --- targeting, table, weights ------------------------------------------------------------------


def test_counts_for_target_all_and_the_table_contract(workdir):
    samples, images = make_inputs(workdir)
    table, new_images = run(workdir, transforms=AFFINE, copies=3, target="all")
    in_play = samples[(samples["split"] == "train") & (samples["action"] != "drop")]
    assert len(new_images) == 3 * len(in_play) == 3 * 48
    originals, new = table[table["store"] == "raw"], table[table["store"] == "augmented"]
    # Every input row passes through unchanged except its weight; originals are not copied.
    pd.testing.assert_frame_equal(
        originals[samples.columns].drop(columns="weight").reset_index(drop=True),
        samples.drop(columns="weight"),
    )
    assert originals["parent_id"].isna().all()
    # Parents exist, are train rows in play, and each has exactly 3 copies.
    assert set(new["parent_id"]) == set(in_play["sample_id"])
    assert (new["parent_id"].value_counts() == 3).all()
    assert new["sample_id"].str.fullmatch(r"[0-9a-f]{16}~a[123]").all() and table["sample_id"].is_unique
    parent = originals.set_index("sample_id").loc[new["parent_id"]]
    for column in ("path", "label", "label_name", "group"):
        assert (new[column].to_numpy() == parent[column].to_numpy()).all()
    assert (new["split"] == "train").all() and (new["copies"] == 1).all()
    # The store holds the copies by parent row, then copy index: a parent's copies stay together.
    assert sorted(new["row"]) == list(range(len(new)))
    by_row = new.sort_values("row")
    assert originals.set_index("sample_id").loc[by_row["parent_id"], "row"].is_monotonic_increasing
    assert new["recipe"].nunique() == 1 and json.loads(new["recipe"].iloc[0])[0]["name"] == "RandomAffine"
    # The copies are new images of their parents: a table's image rows read both stores.
    assert (image_rows(new).read() == new_images[new["row"].to_numpy()]).all()
    assert (image_rows(originals).read() == images).all()


def test_weights_split_between_parent_and_copies(workdir):
    samples, _ = make_inputs(workdir)
    table, _ = run(workdir, transforms=AFFINE, copies=3, target="all")
    before = samples[samples["split"] == "train"].groupby("group")["weight"].sum()
    after = table[table["split"] == "train"].groupby("group")["weight"].sum()
    pd.testing.assert_series_equal(before, after)
    small = table[(table["group"] == "small") & (table["split"] == "train")]
    assert np.allclose(small["weight"], samples.loc[samples["group"] == "small", "weight"].iloc[0] / 4)
    test = table[table["split"] == "test"]
    assert (test["weight"] == 1.0).all()


def test_groups_below_share_augments_only_thin_groups(workdir):
    make_inputs(workdir)  # small holds 25% of the weight (8 rows x 1.5), big 75% (40 x 0.9)
    table, new_images = run(
        workdir, transforms=AFFINE, copies=2, target="groups_below_share", share_threshold=0.2
    )
    assert len(new_images) == 0  # no group under 20%
    table, new_images = run(
        workdir, transforms=AFFINE, copies=2, target="groups_below_share", share_threshold=0.3
    )
    new = table[table["store"] == "augmented"]
    assert len(new_images) == 2 * 8 and set(new["group"]) == {"small"}
    assert read_figures("augment", workdir / "reports")["n_augmented"] == 16


def test_by_weight_spends_the_all_budget_in_proportion_to_weight(workdir):
    make_inputs(workdir)
    table, new_images = run(workdir, transforms=AFFINE, copies=2, target="by_weight")
    new = table[table["store"] == "augmented"]
    assert len(new_images) == 2 * 48
    per_parent = new.groupby("parent_id").size()
    small_ids = table.loc[(table["group"] == "small") & (table["store"] == "raw"), "sample_id"]
    # weight 1.5 -> 3 copies each; weight 0.9 -> 1.8: 2 copies for the 32 rows that the
    # largest remainders (ties to the earlier row) pick, 1 for the other 8
    assert (per_parent.loc[small_ids] == 3).all()
    assert per_parent.drop(small_ids).tolist() == [2] * 32 + [1] * 8


def test_zero_copies_is_a_pass_through(workdir):
    samples, _ = make_inputs(workdir)
    table, new_images = run(workdir, copies=0, transforms=AFFINE)
    assert new_images.shape == (0, 28, 28, 1)
    assert len(table) == len(samples) and (table["store"] == "raw").all()
    pd.testing.assert_frame_equal(table[samples.columns], samples)
    metrics = read_figures("augment", workdir / "reports")
    assert metrics["n_augmented"] == 0 and metrics["frechet_distance"] is None
    assert "pass-through" in (workdir / "reports/augment.md").read_text()


# --- randomness ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_deterministic_per_sample_and_seeded(workdir, channels, tmp_path_factory):
    make_inputs(workdir, channels=channels)
    set_params(workdir / "params.yaml", image={"channels": channels})
    transforms = [*AFFINE, {"name": "RandomErasing", "args": {"p": 1.0, "value": 255}}]
    table, stored = run(workdir, transforms=transforms, copies=2, target="all")
    new_images = stored[table.loc[table["store"] == "augmented", "row"].to_numpy()]  # table order
    first = outputs_bytes(workdir)
    assert new_images.shape[1:] == (28, 28, channels)
    assert augment.main([]) == 0
    assert outputs_bytes(workdir) == first
    # Per-sample randomness: the two copies of one parent differ, and so do all images.
    assert len({image.tobytes() for image in new_images}) == len(new_images)
    # Each image's draw depends on (seed, parent id, copy index) only, not on the batch.
    parents = image_rows(table.set_index("sample_id").loc[table["parent_id"].dropna()].reset_index()).read()
    keys = aug.sample_keys(
        0, table["parent_id"].dropna(), [int(s[-1]) for s in table["sample_id"][-len(parents) :]]
    )
    pipeline = augment_plan.build_pipeline(load_params(workdir / "params.yaml"), "params.yaml")
    assert (aug.augment(parents[5:], keys[5:], pipeline, batch_size=7) == new_images[5:]).all()
    set_params(workdir / "params.yaml", seed=1)
    assert augment.main([]) == 0
    assert not (np.asarray(read_images(workdir / OUT / "images")) == stored).all()


def test_per_sample_fallback_is_seeded_per_image():
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    images = np.concatenate([images, images])  # the same image twice, with other keys
    pipeline = [v2.ColorJitter(brightness=0.5, contrast=0.5)]
    assert aug.batched_kernel(pipeline[0]) is None
    keys = aug.sample_keys(0, [str(i) for i in range(12)], [1] * 12)
    out = aug.augment(images, keys, pipeline, batch_size=5)
    assert (aug.augment(images[::-1], keys[::-1], pipeline)[::-1] == out).all()
    assert not (out[:6] == out[6:]).all(axis=(1, 2, 3)).any()


def test_batched_affine_equals_v2_with_the_same_parameters():
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (32, 3, 20, 24), dtype=np.uint8))
    t = v2.RandomAffine(
        degrees=30, translate=(0.2, 0.1), scale=(0.8, 1.2), shear=(-10, 10, -5, 5), fill=[9, 99, 199]
    )
    u = aug.uniforms(np.arange(32, dtype=np.uint64), 0, 6)
    out = aug._affine_kernel(t, x, u)
    angle, tx, ty, scale, shear_x, shear_y = aug._affine_params(t, u, 20, 24)
    assert len(set(np.round(angle, 6))) == 32  # one draw per image
    for i in range(32):
        ref = v2.functional.affine(
            x[i], angle=float(angle[i]), translate=[int(tx[i]), int(ty[i])], scale=float(scale[i]),
            shear=[float(shear_x[i]), float(shear_y[i])], fill=[9.0, 99.0, 199.0],
        )  # fmt: skip
        assert torch.equal(ref, out[i])


def test_batched_resized_crop_matches_v2_within_one_grey_level():
    x = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (16, 1, 28, 28), dtype=np.uint8))
    t = v2.RandomResizedCrop(28, scale=(0.3, 1.0), ratio=(0.75, 1.33))
    u = aug.uniforms(np.arange(16, dtype=np.uint64), 3, 22)
    out = aug._resized_crop_kernel(t, x, u)
    for i in range(16):
        # Recover the crop v2 would take from the same uniforms (first of 10 tries that fits).
        area = 784 * (0.3 + u[i, :10] * 0.7)
        ratio = np.exp(np.log(0.75) + u[i, 10:20] * (np.log(1.33) - np.log(0.75)))
        w, h = np.round(np.sqrt(area * ratio)).astype(int), np.round(np.sqrt(area / ratio)).astype(int)
        k = ((w <= 28) & (h <= 28)).argmax()
        top, left = int(u[i, 20] * (29 - h[k])), int(u[i, 21] * (29 - w[k]))
        ref = v2.functional.resized_crop(x[i], top, left, int(h[k]), int(w[k]), [28, 28], antialias=True)
        assert (ref.int() - out[i].int()).abs().max() <= 1


# --- distribution check and report ----------------------------------------------------------------


def test_frechet_distance_matches_the_textbook_formula():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 5)), rng.normal(0.5, 2.0, size=(300, 5)) @ rng.normal(size=(5, 5))
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * sqrtm(cov_a @ cov_b).real)
    assert drift.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert drift.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    assert drift.frechet_distance(a[:3], b[:3]) >= 0  # rank-deficient covariances stay real


def test_report_shows_previews_drift_and_warns(workdir):
    make_inputs(workdir)
    run(workdir, transforms=AFFINE, copies=2, target="all", preview=4)
    mild = read_figures("augment", workdir / "reports")
    html = (workdir / "reports/augment.html").read_text()
    assert set(mild) == {"n_augmented", "n_parents", "frechet_distance", "diversity_gain"}
    assert html.count("data:image/png;base64,") == 4 * 3
    assert "<script" not in html and "Content-Security-Policy" in html and "<svg" in html
    strong = [{"name": "RandomAffine", "args": {"degrees": 90, "translate": [0.4, 0.4], "scale": [0.3, 0.6]}}]
    set_params(workdir / "params.yaml", gates={"max_frechet_distance": mild["frechet_distance"] * 1.5})
    run(workdir, transforms=strong, copies=2, target="all")
    metrics = read_figures("augment", workdir / "reports")
    assert metrics["frechet_distance"] > 1.5 * mild["frechet_distance"]
    text = (workdir / "reports/augment.md").read_text()
    # The gate judges the overall figure; each group is held to the same threshold.
    assert "**Verdict: FAIL**" in text and "| augment.frechet_distance (gates.max_frechet_distance) |" in text
    for group in ("big", "small"):
        assert f"group {group}: Frechet distance" in text
    assert "over gates.max_frechet_distance" in text and "augment.max_frechet " not in text
    # No threshold: no gate and no per-group warning.
    set_params(workdir / "params.yaml", gates={"max_frechet_distance": None})
    run(workdir, transforms=strong, copies=2, target="all")
    text = (workdir / "reports/augment.md").read_text()
    assert "max_frechet" not in text and ": Frechet distance" not in text and "**Verdict: PASS**" in text


def test_stage_module_does_not_import_torch():
    code = "import sys, curate.stages.augment; print('torch' in sys.modules, 'torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_asking_for_an_absent_device_fails_clearly(workdir):
    make_inputs(workdir)
    if torch.cuda.is_available():
        pytest.skip("this machine has cuda")
    set_params(workdir / "params.yaml", augment={"device": "cuda"})
    with pytest.raises(
        CurateError, match=r"params.yaml: augment.device = 'cuda', but this machine has no cuda"
    ):
        augment.main([])
    assert not (workdir / OUT).exists()


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnn", 4, 3, 16)
    meta = {"name": "cnn", "n_classes": 4, "channels": 3, "size": 16, "class_names": ["a", "b", "c", "d"]}
    save_checkpoint(tmp_path / "m.pt", model, meta)
    first = (tmp_path / "m.pt").read_bytes()
    save_checkpoint(tmp_path / "m.pt", model, meta)
    assert (tmp_path / "m.pt").read_bytes() == first
    loaded, loaded_meta = load_checkpoint(tmp_path / "m.pt")
    assert loaded_meta == meta and not loaded.training
    x = torch.rand(2, 3, 16, 16)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    with pytest.raises(CurateError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CurateError, match="bad.pt: not a curate checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_missing_inputs_fail_with_one_line(workdir):
    with pytest.raises(CurateError, match="data/balanced/samples.parquet: not found"):
        augment.main([])
    samples, _ = make_inputs(workdir)
    write_samples(workdir / "data/balanced/samples.parquet", samples.drop(columns="weight"))
    with pytest.raises(CurateError, match="missing column 'weight'"):
        augment.main([])

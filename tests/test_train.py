import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from curate.data.image_rows import write_images
from curate.data.samples import write_samples
from curate.errors import CurateError
from curate.learning import feeding, inference, networks, training
from curate.learning.checkpoint import load_checkpoint, load_initial_weights, save_checkpoint
from curate.learning.run_record import RunRecord, Summary
from curate.params import TrainParams, load_params
from curate.report.render import read_figures
from curate.stages import train, train_report
from tests.conftest import set_params

OUTPUTS = [
    "models/model.pt",
    "dvclive/train/plots/metrics/train/loss.tsv",
    "dvclive/train/plots/metrics/val/loss.tsv",
    "dvclive/train/plots/metrics/train/accuracy.tsv",
    "dvclive/train/plots/metrics/val/accuracy.tsv",
    "reports/train_report.html",
    "reports/train_report.md",
    "reports/metrics/train_report.json",
    "reports/details/train_report.json",
]
TINY = {"epochs": 2, "batch_size": 32, "val_fraction": 0.2, "device": "cpu"}
CPU = torch.device("cpu")


def digit_like(labels: np.ndarray, rng: np.random.Generator, size: int = 16, channels: int = 1) -> np.ndarray:
    """Separable images: class k is a bright bar at row band k, on noise."""
    images = rng.integers(0, 40, (len(labels), size, size, channels), dtype=np.uint8)
    for i, label in enumerate(labels):
        top = 2 + 4 * int(label)
        images[i, top : top + 3, 2:-2] = 220
    return images


def make_inputs(root, big=60, small=12, n_test=30, copies_per_small=2, seed=0, size=16):
    """data/raw + data/augmented as the augment stage leaves them: two groups, 3 classes,
    test rows, a dropped row, and augmented copies of the small group's rows."""
    rng = np.random.default_rng(seed)
    n_raw = big + small + n_test + 1
    group = ["big"] * big + ["small"] * small + ["big"] * n_test + ["big"]
    split = ["train"] * (big + small) + ["test"] * n_test + ["train"]
    label = np.arange(n_raw) % 3
    raw = pd.DataFrame(
        {
            "sample_id": [f"{i:016x}" for i in range(n_raw)],
            "path": [f"{g}/{i:05d}" for i, g in enumerate(group)],
            "row": np.arange(n_raw),
            "label": label,
            "label_name": [f"c{v}" for v in label],
            "group": group,
            "split": split,
            "action": ["none"] * (n_raw - 1) + ["drop"],
            "copies": 1,
            "weight": np.where(np.array(group) == "small", 3.0, 1.0),
            "store": "raw",
        }
    )
    raw["parent_id"] = pd.Series(pd.NA, index=raw.index, dtype="string")
    parents = raw[(raw["group"] == "small") & (raw["split"] == "train")]
    new = parents.loc[parents.index.repeat(copies_per_small)].copy()
    new["parent_id"] = new["sample_id"].astype("string")
    new["sample_id"] = [f"{p}~a{k % copies_per_small + 1}" for k, p in enumerate(new["parent_id"])]
    new["store"] = "augmented"
    new["row"] = np.arange(len(new))
    samples = pd.concat([raw, new], ignore_index=True)
    raw_images = digit_like(label, rng, size)
    write_images(root / "data/raw/images", raw_images)
    write_images(root / "data/augmented/images", digit_like(new["label"].to_numpy(), rng, size))
    write_samples(root / "data/augmented/samples.parquet", samples)
    return samples


def run_train(workdir, **train_params):
    set_params(workdir / "params.yaml", train={**TINY, **train_params})
    assert train.main([]) == 0
    assert train_report.main([]) == 0


def spy_on_training_batches(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(labels, loss weights or None) of every batch ``train`` trains on, validation excluded."""
    batches = []
    batch_loss = training._batch_loss

    def spy(net, x, y, w, cuda):
        if net.training:
            batches.append((y.detach().cpu().clone(), w))
        return batch_loss(net, x, y, w, cuda)

    monkeypatch.setattr(training, "_batch_loss", spy)
    return batches


# --- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [16, 28, 32])
def test_models_map_any_small_image_to_class_logits(name, channels, size):
    net = networks.build_model(name, 7, channels, size).eval()
    x = feeding.to_tensor(np.zeros((2, size, size, channels), dtype=np.uint8), "cpu", polarity="auto")
    assert x.shape == (2, channels, size, size)
    with torch.no_grad():
        assert net(x).shape == (2, 7)
        assert net.embed(x).shape == (2, net.head.in_features)


@pytest.mark.parametrize("size", [28, 56])
def test_online_shift_is_a_fraction_of_the_side(monkeypatch, size):
    """At most MAX_SHIFT pixels at 28 x 28, twice that at 56 x 56: the same move relative to the image."""
    monkeypatch.setattr(feeding, "MAX_ROTATE", 0.0)
    monkeypatch.setattr(feeding, "MAX_SCALE", 0.0)
    x = torch.zeros(512, 1, size, size)
    x[:, :, size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] = 1.0
    moved = feeding.augment(x, torch.Generator().manual_seed(0))
    columns = torch.arange(size, dtype=torch.float32)
    centre_x = (moved.sum(dim=2)[:, 0] * columns).sum(1) / moved.sum(dim=(1, 2, 3))
    largest = (centre_x - (size - 1) / 2).abs().max().item()
    limit = feeding.MAX_SHIFT * size / feeding.SHIFT_REFERENCE_SIZE
    assert 0.9 * limit < largest <= limit + 1e-4


def test_weighted_epoch_order_honours_weights():
    weights = torch.tensor([1.0, 0.0, 3.0, 6.0])
    order = training.epoch_order(100_000, torch.Generator().manual_seed(0), weights.repeat(25_000))
    shares = np.bincount(order.numpy() % 4, minlength=4) / len(order)
    np.testing.assert_allclose(shares, [0.1, 0.0, 0.3, 0.6], atol=0.01)
    assert shares[1] == 0  # a weight of 0 is never drawn
    plain = training.epoch_order(50, torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(50))  # without weights: a permutation


def test_sampler_weighting_learns_a_class_only_weight_shows(monkeypatch):
    # Class 1 is present but weightless; with the sampler it is never drawn, so never predicted.
    trained = spy_on_training_batches(monkeypatch)
    rng = np.random.default_rng(0)
    labels = np.arange(90) % 3
    images = digit_like(labels, rng)
    weights = np.where(labels == 1, 0.0, 1.0)
    torch.manual_seed(0)
    net = networks.build_model("cnn", 3, 1, 16)
    config = training.FitConfig(
        epochs=3, batch_size=16, lr=0.01, seed=0, device=CPU, polarity="auto", weighting="sampler"
    )
    training.fit(net, images, labels, config, sample_weights=weights)
    probs, _ = inference.predict(net, images, batch_size=64, device=CPU, polarity="auto")
    assert 1 not in set(probs.argmax(1).tolist())
    assert {0, 2} <= set(probs.argmax(1).tolist())
    seen = torch.cat([y for y, _ in trained])
    assert len(seen) == 3 * 90 and set(seen.tolist()) == {0, 2}  # N draws per epoch, never a weight of 0
    assert all(w is None for _, w in trained)  # the sampler replaces the loss weights: a plain mean


def test_fit_keeps_the_best_epoch_and_stops_after_patience(monkeypatch):
    losses = iter([1.0, 0.5, 0.7, 0.8, 0.2, 0.1])
    snapshots = []

    def fake_validate(net, *args, **kwargs):
        snapshots.append({k: v.clone() for k, v in net.state_dict().items()})
        return next(losses), 0.5

    monkeypatch.setattr(training, "_validate", fake_validate)
    rng = np.random.default_rng(0)
    labels = np.arange(32) % 3
    images = digit_like(labels, rng)
    seen = []
    torch.manual_seed(0)
    net = networks.build_model("cnn", 3, 1, 16)
    config = training.FitConfig(
        epochs=6, batch_size=16, lr=0.01, seed=0, device=CPU, polarity="auto", patience=2
    )
    history = training.fit(
        net, images, labels, config, validation=(images, labels, None), on_epoch=seen.append
    )
    # Best at epoch 2; epochs 3 and 4 bring no lower loss: patience 2 stops after epoch 4.
    assert [s["epoch"] for s in history] == [1, 2, 3, 4] and seen == history
    assert [s["best"] for s in history] == [True, True, False, False]
    restored = net.state_dict()
    assert all(torch.equal(restored[k], snapshots[1][k]) for k in restored)


def test_fit_is_a_function_of_the_seed_on_cpu():
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 3
    images = digit_like(labels, rng)
    states = []
    for _ in range(2):
        torch.manual_seed(1)
        net = networks.build_model("cnn", 3, 1, 16)
        config = training.FitConfig(epochs=1, batch_size=16, lr=0.01, seed=1, device=CPU, polarity="auto")
        training.fit(net, images, labels, config, validation=(images, labels, np.ones(40)))
        states.append(net.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# --- the stage --------------------------------------------------------------------------------


def test_validation_split_keeps_copies_of_validation_images_out_of_training(workdir):
    samples = make_inputs(workdir)
    samples.loc[samples["sample_id"] == f"{3:016x}", "copies"] = 3  # resampled row: used 3 times
    fit_rows, val_rows = train.split_validation(samples, 0.25, seed=0)
    assert (val_rows["store"] == "raw").all() and (val_rows["split"] == "train").all()
    assert "drop" not in set(fit_rows["action"]) | set(val_rows["action"])
    assert not set(val_rows["sample_id"]) & set(fit_rows["sample_id"])
    assert not set(val_rows["sample_id"]) & set(fit_rows["parent_id"].dropna())
    # Stratified by group x label: a quarter of each of the 6 strata (big: 20 each, small: 4 each).
    counts = val_rows.groupby(["group", "label"]).size()
    assert counts.to_dict() == {(g, k): (5 if g == "big" else 1) for g in ("big", "small") for k in range(3)}
    if f"{3:016x}" not in set(val_rows["sample_id"]):
        assert (fit_rows["sample_id"] == f"{3:016x}").sum() == 3


def test_rows_whose_label_clean_doubts_never_validate(workdir):
    samples = make_inputs(workdir).assign(label_weight=1.0)
    doubted = samples.index[(samples["split"] == "train") & (samples.index % 3 == 0)]
    samples.loc[doubted, "label_weight"] = 0.1  # held by the audit: weighted, not trusted
    fit_rows, val_rows = train.split_validation(samples, 0.25, seed=0)
    assert (val_rows["label_weight"] == 1).all() and len(val_rows) > 0
    in_play = samples.loc[doubted].query("action != 'drop' and copies > 0 and store == 'raw'")["sample_id"]
    assert set(in_play) <= set(fit_rows["sample_id"])  # they still train, at their weight


def test_train_stage_writes_a_loadable_checkpoint_and_deterministic_outputs(workdir):
    make_inputs(workdir)
    run_train(workdir)
    for path in OUTPUTS:
        assert (workdir / path).is_file(), path
    first = {path: (workdir / path).read_bytes() for path in OUTPUTS}
    payload = torch.load(workdir / "models/model.pt", map_location="cpu", weights_only=True)
    meta = payload["meta"]
    assert meta["class_names"] == ["c0", "c1", "c2"] and (meta["size"], meta["channels"]) == (16, 1)
    assert meta["params_digest"] == train.params_digest(TrainParams(**TINY))
    assert meta["normalize_polarity"] == "auto"  # image.normalize_polarity, for evaluate to feed it the same
    model, _ = load_checkpoint(workdir / "models/model.pt")
    assert model(feeding.to_tensor(np.zeros((1, 16, 16, 1), np.uint8), "cpu", polarity="auto")).shape == (
        1,
        3,
    )
    metrics = read_figures("train_report", workdir / "reports")
    assert metrics["epochs_run"] == 2 and 0 <= metrics["best_val_accuracy"] <= 1
    assert metrics["images_per_second"] > 0
    assert (workdir / "dvclive/train/plots/metrics/val/loss.tsv").read_text().splitlines()[0] == "step\tloss"
    assert "<script" not in (workdir / "reports/train_report.html").read_text()

    run_train(workdir)
    measured = {"reports/details/train_report.json", "reports/train_report.html", "reports/train_report.md"}
    for path in OUTPUTS:
        if path not in measured:  # throughput is measured; everything else repeats byte for byte
            assert (workdir / path).read_bytes() == first[path], path

    def strip(text):
        return [line for line in text.splitlines() if "per second" not in line and "seconds" not in line]

    assert strip((workdir / "reports/train_report.md").read_text()) == strip(
        first["reports/train_report.md"].decode()
    )


def test_train_stage_sampler_weighting_and_no_online_augmentation(workdir, monkeypatch):
    samples = make_inputs(workdir)
    # Weightless rows (the big group's class c1): the sampler must never draw them.
    samples.loc[(samples["group"] == "big") & (samples["label"] == 1), "weight"] = 0.0
    write_samples(workdir / "data/augmented/samples.parquet", samples)
    draws = []
    draw = training.epoch_order

    def spy_order(n, generator, weights=None):
        order = draw(n, generator, weights)
        draws.append((weights, order))
        return order

    monkeypatch.setattr(training, "epoch_order", spy_order)
    monkeypatch.setattr(feeding, "augment", lambda x, generator: pytest.fail("online_augment is off"))
    trained = spy_on_training_batches(monkeypatch)
    run_train(workdir, weighting="sampler", online_augment=False, epochs=1)
    assert read_figures("train_report", workdir / "reports")["epochs_run"] == 1

    fit_rows, _ = train.split_validation(samples, TINY["val_fraction"], load_params("params.yaml").seed)
    fit_weights = fit_rows["weight"].to_numpy()
    ((weights, order),) = draws  # one epoch: one draw of the whole order
    np.testing.assert_array_equal(weights.numpy(), fit_weights.astype(np.float32))  # the rows' own weights
    order = order.numpy()
    assert len(order) == len(fit_rows) and len(set(order)) < len(order)  # N draws, with replacement
    assert (fit_weights[order] > 0).all() and (fit_weights == 0).any()
    # Trained on exactly the drawn rows, in that order, with the plain mean loss.
    seen = torch.cat([y for y, _ in trained]).numpy()
    np.testing.assert_array_equal(seen, fit_rows["label"].to_numpy()[order])
    assert all(w is None for _, w in trained)


def test_init_weights_from_a_checkpoint(workdir):
    make_inputs(workdir)
    torch.manual_seed(5)
    source = networks.build_model("cnn", 3, 1, 16)
    save_checkpoint(workdir / "start.pt", source, {"name": "cnn", "n_classes": 3, "channels": 1, "size": 16})
    net = networks.build_model("cnn", 3, 1, 16)
    load_initial_weights(net, workdir / "start.pt")
    assert all(torch.equal(net.state_dict()[k], source.state_dict()[k]) for k in source.state_dict())
    run_train(workdir, init_weights="start.pt", epochs=1)


@pytest.mark.parametrize(
    ("train_params", "fragment"),
    [
        ({"init_weights": "missing.pt"}, "train.init_weights: missing.pt: file not found"),
        # Where the folds stage wrote its embedder before data/folds/: the message names the new path.
        (
            {"init_weights": "data/clean/embedder.pt"},
            "train.init_weights: data/clean/embedder.pt: file not found (moved to data/folds/embedder.pt)",
        ),
        ({"val_fraction": 0.01}, "train.val_fraction"),
    ],
)
def test_bad_train_input_is_one_line_naming_the_key(workdir, train_params, fragment):
    make_inputs(workdir)
    set_params(workdir / "params.yaml", train={**TINY, **train_params})
    with pytest.raises(CurateError, match=re.escape(fragment)):
        train.main([])
    assert not (workdir / "models/model.pt").exists()


def test_missing_input_column_names_the_file(workdir):
    samples = make_inputs(workdir).drop(columns="parent_id")
    write_samples(workdir / "data/augmented/samples.parquet", samples)
    with pytest.raises(CurateError, match="samples.parquet: missing column 'parent_id'"):
        train.main([])


def test_the_run_record_reads_back_as_written_and_an_older_one_is_named(tmp_path):
    summary = Summary(2, 1, 0.5, 0.9, "cpu", 1.25, 80.0)
    record = RunRecord(
        [{"epoch": 1, "val_loss": 0.5}], summary, [["g", 3, 1, 1.0, 1]], 4, 1, "abc", {"threads": 1}
    )
    path = tmp_path / "models/train.json"
    record.write(path)
    assert RunRecord.read(path) == record
    # The layout train_report has always read: sorted keys, two-space indent, the summary nested.
    assert path.read_text().startswith('{\n  "digest": "abc",\n  "environment": {\n    "threads": 1\n  },\n')
    assert json.loads(path.read_text())["summary"]["best_val_accuracy"] == 0.9
    older = {
        key: value
        for key, value in json.loads(path.read_text()).items()
        if key not in ("digest", "environment")
    }
    path.write_text(json.dumps(older))
    assert (RunRecord.read(path).digest, RunRecord.read(path).environment) == ("n/a", {})
    path.write_text(json.dumps({key: value for key, value in older.items() if key != "n_val"}))
    with pytest.raises(CurateError, match=r"train.json: missing key 'n_val' \(written by the train stage"):
        RunRecord.read(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_an_absent_device_fails_clearly(workdir):
    make_inputs(workdir)
    set_params(workdir / "params.yaml", train={**TINY, "device": "cuda"})
    with pytest.raises(CurateError, match="train.device = 'cuda', but this machine has no cuda"):
        train.main([])

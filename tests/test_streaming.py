"""Streaming: train, predict and the stages read batches from the memory-mapped image stores instead
of a gathered copy (train.data_on_device), with the same results as the in-memory fast path."""

import io

import numpy as np
import pandas as pd
import pytest
import torch

from curate.data.image_rows import ImageRows, image_rows, read_images, write_images
from curate.learning import feeding, inference, networks, training
from curate.stages import evaluate, train
from tests.conftest import set_params
from tests.test_train import TINY, digit_like, make_inputs

CPU = torch.device("cpu")


def two_stores(tmp_path):
    """Two stores and a table that points into both, out of order, with repeated rows."""
    rng = np.random.default_rng(0)
    stores = {"raw": tmp_path / "raw", "augmented": tmp_path / "aug"}
    write_images(stores["raw"], rng.integers(0, 256, (20, 6, 6, 1), dtype=np.uint8), segment_mb=0.0002)
    write_images(stores["augmented"], rng.integers(0, 256, (9, 6, 6, 1), dtype=np.uint8))
    samples = pd.DataFrame(
        {"store": ["raw", "augmented", "raw", "raw", "augmented", "raw"], "row": [7, 3, 0, 7, 8, 19]}
    )
    return samples, stores


def test_image_rows_read_what_the_stores_hold_in_table_order(tmp_path):
    samples, stores = two_stores(tmp_path)
    opened = {name: read_images(path) for name, path in stores.items()}
    gathered = np.stack(
        [opened[store][row] for store, row in zip(samples["store"], samples["row"], strict=True)]
    )
    lazy = image_rows(samples, stores)
    assert lazy.shape == gathered.shape and len(lazy) == 6 and lazy.nbytes == gathered.nbytes
    np.testing.assert_array_equal(np.asarray(lazy), gathered)
    np.testing.assert_array_equal(lazy.read(np.array([5, 0, 0, 1])), gathered[[5, 0, 0, 1]])
    np.testing.assert_array_equal(lazy[4], gathered[4])  # an int reads one image
    subset = lazy[np.array([1, 3])]  # an index array or a slice: still lazy
    assert isinstance(subset, ImageRows) and isinstance(lazy[2:5], ImageRows)
    np.testing.assert_array_equal(np.asarray(subset), gathered[[1, 3]])
    np.testing.assert_array_equal(np.asarray(lazy[2:5]), gathered[2:5])
    # A table without a store column points into the raw store, the only one opened.
    raw_only = image_rows(samples.drop(columns="store"), stores)
    assert raw_only.names == ["raw"]
    np.testing.assert_array_equal(
        np.asarray(raw_only), np.stack([opened["raw"][row] for row in samples["row"]])
    )


def train_once(images, labels, weights, validation, data_on_device, weighting):
    torch.manual_seed(0)
    net = networks.build_model("cnn", 3, 1, 16)
    config = training.FitConfig(
        epochs=2,
        batch_size=16,
        lr=0.01,
        seed=0,
        device=CPU,
        polarity="auto",
        weighting=weighting,
        data_on_device=data_on_device,
    )
    history = training.fit(net, images, labels, config, sample_weights=weights, validation=validation)
    return net.state_dict(), [{k: v for k, v in s.items() if k != "seconds"} for s in history]


@pytest.mark.parametrize("weighting", ["loss", "sampler"])
def test_streaming_trains_the_same_model_as_the_in_memory_path(tmp_path, monkeypatch, weighting):
    """Same epoch order, augmentation draws and rows: on a CPU the same weights bit for bit (the
    uint8 -> float conversion is per pixel, so a batch holds the same floats either way)."""
    rng = np.random.default_rng(1)
    labels = np.arange(100) % 3
    write_images(tmp_path / "images", digit_like(labels, rng), segment_mb=0.01)
    images = read_images(tmp_path / "images")  # memory-mapped segments
    weights = rng.uniform(0.2, 3.0, len(labels))
    validation = (images[80:], labels[80:], None)
    read = []
    prefetched = feeding.prefetched

    def spy(source, batches, pin):
        read.append(len(batches))
        return prefetched(source, batches, pin)

    monkeypatch.setattr(feeding, "prefetched", spy)
    kept = train_once(images, labels, weights, validation, "always", weighting)
    assert read == []  # the fast path reads no batches
    streamed = train_once(images, labels, weights, validation, "never", weighting)
    assert read == [7, 1, 7, 1]  # per epoch: 7 training batches of 16 of 100, 1 validation batch
    assert kept[1] == streamed[1]  # history: losses and accuracies
    assert all(torch.equal(kept[0][key], streamed[0][key]) for key in kept[0])


def test_auto_streams_a_set_over_the_budget(monkeypatch):
    images = np.zeros((10, 8, 8, 1), np.uint8)
    config = training.FitConfig(epochs=1, batch_size=8, lr=0.01, seed=0, device=CPU, polarity="auto")
    assert training.keeps_in_memory(images, config)
    monkeypatch.setattr(training, "CPU_FLOAT_BUDGET", images.nbytes * 4 - 1)
    assert not training.keeps_in_memory(images, config)
    always = training.FitConfig(**{**config.__dict__, "data_on_device": "always"})
    assert training.keeps_in_memory(images, always)
    with pytest.raises(ValueError, match="data_on_device"):
        training.FitConfig(**{**config.__dict__, "data_on_device": "sometimes"})


def test_predict_reads_a_lazy_source_as_it_reads_an_array(tmp_path):
    samples, stores = two_stores(tmp_path)
    lazy = image_rows(samples, stores)
    torch.manual_seed(0)
    net = networks.build_model("cnn", 4, 1, 6)
    from_source = inference.predict(net, lazy, batch_size=4, device=CPU, polarity="auto")
    from_array = inference.predict(net, np.asarray(lazy), batch_size=4, device=CPU, polarity="auto")
    for a, b in zip(from_source, from_array, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_stage_streams_without_a_gathered_copy(workdir, monkeypatch):
    make_inputs(workdir)
    set_params(workdir / "params.yaml", train=TINY)
    assert train.main([]) == 0
    kept = (workdir / "models/model.pt").read_bytes()
    reads, read = [], ImageRows.read

    def spy(self, index=None):
        images = read(self, index)
        reads.append(len(images))
        return images

    monkeypatch.setattr(ImageRows, "read", spy)
    set_params(workdir / "params.yaml", train={**TINY, "data_on_device": "never"})
    assert train.main([]) == 0
    assert reads and max(reads) <= TINY["batch_size"]  # batch by batch, never the whole set
    # The same weights; the meta differs in its params digest only (data_on_device is a train param).
    streamed = torch.load(workdir / "models/model.pt", weights_only=True)
    reference = torch.load(io.BytesIO(kept), weights_only=True)
    assert all(torch.equal(reference["state_dict"][k], v) for k, v in streamed["state_dict"].items())
    assert evaluate.main([]) == 0  # evaluate reads the test rows from the store batch by batch

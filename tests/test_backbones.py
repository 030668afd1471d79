"""Pretrained backbones (curate.learning.backbones): every architecture builds, ImageNet weights come from
torchvision's cache or a local file and never from the network in tests, checkpoints rebuild
without any weights, and ``folds.method: embeddings`` runs the clean half of the pipeline."""

from __future__ import annotations

import typing
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torchvision

from curate.errors import CurateError
from curate.learning import backbones, fold_training
from curate.learning.backbones import ARCHITECTURES
from curate.learning.checkpoint import load_checkpoint, save_checkpoint
from curate.learning.feeding import to_tensor
from curate.learning.inference import predict
from curate.learning.model_choice import Backbone
from curate.learning.networks import SmallInputResNet18, build_model
from curate.params import ModelName
from tests.conftest import set_params

CPU = torch.device("cpu")
SIDE = 32  # a small input_size keeps every forward pass fast on CPU


def images(n: int, channels: int, size: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty torch cache in tmp_path, and any download or URL open fails the way offline does."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    attempts = []

    def refuse(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


def torchvision_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """What a torchvision weights file holds: the published network's state_dict, 1000-class head."""
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None).state_dict()


def assert_body_equals(net: backbones.TorchvisionBackbone, state: dict[str, torch.Tensor]) -> None:
    classifier = backbones.CLASSIFIER[net.name] + "."
    body = net.body.state_dict()
    expected = {key: value for key, value in state.items() if not key.startswith(classifier)}
    assert body.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(body[key], value), key


def test_params_offer_every_backbone():
    assert typing.get_args(ModelName) == backbones.MODELS


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_gives_logits_and_embeddings(name):
    torch.manual_seed(0)
    net = build_model(name, 7, 1, 20, input_size=SIDE).eval()
    for channels in (1, 3):  # a single channel is repeated to the three the weights expect
        x = to_tensor(images(3, channels), CPU, polarity="off")
        with torch.no_grad():
            logits, features = net(x), net.embed(x)
        assert logits.shape == (3, 7)
        assert features.shape == (3, net.head.in_features)
        assert torch.isfinite(logits).all()
    # The adapter feeds what the weights expect: [0, 1] pixels resized, then ImageNet's mean/std.
    fed = net.adapter(to_tensor(np.full((1, 20, 20, 1), 255, np.uint8), CPU, polarity="off"))
    assert fed.shape == (1, 3, SIDE, SIDE)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(fed[0, :, 0, 0], expected)


def test_input_size_defaults_to_the_weights_side_and_resnet18_keeps_its_small_input_stem():
    assert Backbone("resnet50").resolved_input_size() == 224
    assert Backbone("resnet18", "imagenet").resolved_input_size() == 224
    assert Backbone("convnext_tiny", input_size=64).resolved_input_size() == 64
    # resnet18 with no weights and no input_size: the small-input network of earlier versions.
    assert Backbone("resnet18").resolved_input_size() is None
    assert isinstance(Backbone("resnet18").initial_model(3, 1, 20), SmallInputResNet18)
    assert isinstance(build_model("resnet18", 3, 1, 20, input_size=SIDE), backbones.TorchvisionBackbone)


def test_cnn_takes_neither_imagenet_weights_nor_an_input_size():
    with pytest.raises(CurateError, match=r"^folds\.weights: imagenet, but folds\.model cnn has no"):
        Backbone("cnn", "imagenet", section="folds").resolved_input_size()
    with pytest.raises(CurateError, match=r"^train\.input_size: 64, but train\.model cnn"):
        Backbone("cnn", input_size=64).resolved_input_size()


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "convnext_tiny"])
def test_imagenet_weights_load_from_the_torch_cache(name, offline):
    state = torchvision_state(name, seed=1)
    cached = backbones.weights_file(name)
    assert str(cached.parent).startswith(str(torch.hub.get_dir()))
    assert cached.name == backbones.imagenet_weights(name).url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    torch.manual_seed(0)
    net = Backbone(name, "imagenet", SIDE, section="folds").initial_model(5, 3, 20)
    assert_body_equals(net, state)
    assert net.head.out_features == 5  # a new head for the project's classes
    assert offline == []  # found in the cache: nothing was fetched


def test_offline_with_nothing_cached_stops_with_where_to_put_the_file(offline):
    with pytest.raises(CurateError) as raised:
        Backbone("resnet18", "imagenet", SIDE, section="train").initial_model(5, 3, 20)
    message = str(raised.value)
    folder = backbones.weights_file("resnet18").parent
    assert "\n" not in message
    assert message.startswith("train.weights: imagenet: resnet18-f37072fd.pth is not in ")
    assert str(folder) in message and "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "train.init_weights" in message
    assert offline == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]  # one try, refused


def test_a_bad_file_in_the_cache_is_named(offline):
    cached = backbones.weights_file("resnet18")
    cached.parent.mkdir(parents=True)
    torch.save(torchvision_state("resnet50", seed=1), cached)  # another network's weights
    with pytest.raises(CurateError, match=r"resnet18-f37072fd\.pth: not the ResNet18_Weights\.IMAGENET1K_V1"):
        Backbone("resnet18", "imagenet", SIDE).initial_model(5, 3, 20)


def test_init_weights_loads_a_torchvision_file_or_a_body_alone(tmp_path, offline):
    state = torchvision_state("resnet18", seed=2)
    full, body_only = tmp_path / "resnet18.pth", tmp_path / "body.pth"
    torch.save(state, full)
    torch.save({key: value for key, value in state.items() if not key.startswith("fc.")}, body_only)
    for path in (full, body_only):
        # init_weights wins over the cache: the offline route to ImageNet weights.
        net = Backbone("resnet18", "imagenet", SIDE, str(path), "clean").initial_model(4, 1, 20)
        assert_body_equals(net, state)
        assert net.head.out_features == 4
    # Same number of classes: the file's head comes along too.
    net = Backbone("resnet18", "imagenet", SIDE, str(full)).initial_model(1000, 3, 20)
    assert torch.equal(net.head.weight, state["fc.weight"])
    assert offline == []


def test_init_weights_that_match_nothing_stop(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"unrelated.weight": torch.zeros(3)}, path)
    with pytest.raises(CurateError, match=r"^folds\.init_weights: .*other\.pt: no tensor matches"):
        Backbone("efficientnet_b0", input_size=SIDE, init_weights=str(path), section="folds").initial_model(
            2, 3, 20
        )


@pytest.mark.parametrize("choice", [Backbone("resnet50", "imagenet", SIDE), Backbone("resnet18")])
def test_checkpoint_round_trip_rebuilds_without_weights(choice, tmp_path, offline):
    torch.manual_seed(3)
    net = build_model(choice.name, 3, 1, 20, input_size=choice.resolved_input_size()).eval()
    meta = choice.meta() | {"n_classes": 3, "channels": 1, "size": 20}
    save_checkpoint(tmp_path / "model.pt", net, meta)
    loaded, loaded_meta = load_checkpoint(tmp_path / "model.pt")
    assert loaded_meta == meta and type(loaded) is type(net)
    batch = images(4, 1)
    for mine, theirs in zip(
        predict(net, batch, batch_size=2, device=CPU, polarity="off"),
        predict(loaded, batch, batch_size=2, device=CPU, polarity="off"),
        strict=True,
    ):
        np.testing.assert_array_equal(mine, theirs)
    assert offline == []  # rebuilt from the meta: no weights looked up, imagenet or not


def strata_and_labels(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % k
    return labels, np.array([f"g:{label}" for label in labels])


def test_embedding_predictions_are_out_of_fold_and_deterministic():
    batch = images(40, 3, size=16)
    labels, strata = strata_and_labels(40, 3)

    def run():
        torch.manual_seed(0)
        net = build_model("efficientnet_b0", 3, 3, 16, input_size=SIDE)
        return fold_training.embedding_predictions(
            batch, labels, strata, net=net, k=4, seed=0, polarity="off", device=CPU, batch_size=16
        )

    first, second = run(), run()
    assert first.pred_probs.shape == (40, 3) and first.pred_probs.dtype == np.float32
    np.testing.assert_allclose(first.pred_probs.sum(axis=1), 1, atol=1e-5)
    assert first.embeddings.shape == (40, 1280)
    assert sorted(set(first.fold_of_row)) == [0, 1, 2, 3]
    expected_folds = np.zeros(40, dtype=np.int64)
    for fold, (_, held_out) in enumerate(fold_training.fold_splits(strata, 4, 0)):
        expected_folds[held_out] = fold
    np.testing.assert_array_equal(first.fold_of_row, expected_folds)  # the folds the CNN path uses
    for a, b in ((first.pred_probs, second.pred_probs), (first.embeddings, second.embeddings)):
        assert a.tobytes() == b.tobytes()
    # The embedder's head is the probe fitted on every row, scaler folded in.
    probe = fold_training._probe(0).fit(first.embeddings.astype(np.float64), labels)
    probs, _ = predict(first.embedder, batch, batch_size=16, device=CPU, polarity="off")
    np.testing.assert_allclose(probs, probe.predict_proba(first.embeddings), atol=1e-4)


def test_a_binary_probe_becomes_a_two_class_head():
    features = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(int)
    probe = fold_training._probe(0).fit(features, labels)
    head = torch.nn.Module()
    head.head = torch.nn.Linear(6, 2)
    fold_training._set_head(head, probe, 2)
    with torch.no_grad():
        probs = torch.softmax(head.head(torch.from_numpy(features)), dim=1).numpy()
    np.testing.assert_allclose(probs, probe.predict_proba(features), atol=1e-5)


@pytest.mark.slow
def test_embeddings_method_runs_the_clean_half_of_the_pipeline(workdir):
    from curate.data.samples import read_samples
    from curate.stages import augment, clean, folds, ingest, rebalance

    set_params(
        workdir / "params.yaml",
        ingest={"demo": {"subsample": 0.08}},
        folds={"method": "embeddings", "model": "resnet18", "input_size": SIDE, "k": 2, "batch_size": 64},
        rebalance={"min_group_size": 2},
        augment={"copies": 1},
    )
    for stage in (ingest, folds, clean, rebalance, augment):
        assert stage.main([]) == 0, stage.__name__
    samples = read_samples(workdir / "data/clean/samples.parquet")
    n_train = int((samples["split"] == "train").sum())
    assert np.load(workdir / "data/folds/pred_probs.npy").shape == (n_train, 10)
    assert set(np.load(workdir / "data/folds/folds.npy")) == {0, 1}
    assert np.load(workdir / "data/folds/embeddings.npy").shape == (n_train, 512)
    embedder, meta = load_checkpoint(workdir / "data/folds/embedder.pt")
    assert (meta["name"], meta["weights"], meta["input_size"]) == ("resnet18", "none", SIDE)
    assert isinstance(embedder, backbones.TorchvisionBackbone)
    assert "is_label_issue" in samples.columns
    lead = (workdir / "reports/clean.html").read_text()
    assert "2-fold logistic regressions on frozen resnet18 embeddings (none weights)" in lead
    assert (workdir / "data/augmented/samples.parquet").is_file()  # its drift check read embedder.pt

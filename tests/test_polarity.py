"""image.normalize_polarity: which images ``auto`` inverts (numpy and torch agree), what ``off``
leaves alone, and that the setting travels with the checkpoints to the stages that load them."""

import numpy as np
import pytest
import torch

from curate.data.polarity import light_background
from curate.errors import CurateError
from curate.learning import feeding, inference, networks, training
from curate.learning.checkpoint import load_checkpoint, polarity_of, save_checkpoint
from curate.stages import augment, evaluate
from tests.conftest import set_params
from tests.test_augment import make_inputs as augment_inputs
from tests.test_train import make_inputs as train_inputs
from tests.test_train import run_train

CPU = torch.device("cpu")


def page(background: int, ink: int, size: int = 12, channels: int = 1) -> np.ndarray:
    """One H x W x C image: a ``background`` page with an ``ink`` stroke away from the border."""
    image = np.full((size, size, channels), background, dtype=np.uint8)
    image[size // 3 : 2 * size // 3, 2:-2] = ink
    return image


DARK = page(0, 255)  # MNIST-like: light ink on dark paper
LIGHT = page(255, 0)  # sklearn-like: dark ink on light paper


def test_light_background_by_hand():
    images = np.stack([DARK, LIGHT, page(200, 90), page(100, 250)])
    assert light_background(images).tolist() == [False, True, True, False]
    assert light_background(np.stack([page(255, 0, channels=3)])).tolist() == [False]  # colour: never
    assert light_background(np.zeros((0, 8, 8, 1), dtype=np.uint8)).shape == (0,)


def test_exactly_mid_grey_is_not_light():
    # The border mean must be above half of full scale: 127.5 exactly is not.
    uniform = np.stack([np.full((6, 6, 1), 127, np.uint8), np.full((6, 6, 1), 128, np.uint8)])
    assert light_background(uniform).tolist() == [False, True]
    # Rows 0-2 white: 12 of the 24 border values (first and last row and column) are 255, the
    # mean is 127.5 exactly. One more white border pixel tips it.
    half = np.zeros((1, 6, 6, 1), dtype=np.uint8)
    half[0, :3] = 255
    assert light_background(half).tolist() == [False]
    half[0, 5, 0] = 255
    assert light_background(half).tolist() == [True]
    assert feeding.light_background_tensor(torch.from_numpy(half)).tolist() == [True]


@pytest.mark.parametrize("size", [6, 28, 64, 256])
def test_numpy_and_torch_decide_alike(size):
    rng = np.random.default_rng(size)
    noise = rng.integers(0, 256, (200, size, size, 1), dtype=np.uint8)
    # Borders right around the threshold, where a float mean could round either way.
    near = np.repeat(rng.integers(126, 130, (200, 1, 1, 1), dtype=np.uint8), size, 1).repeat(size, 2)
    near[:, 1:-1, 1:-1] = 0
    near[:, 0, : size // 2] += 1
    images = np.concatenate([noise, near, np.stack([page(255, 0, size), page(0, 255, size)])])
    numpy_says = light_background(images)
    torch_says = feeding.light_background_tensor(torch.from_numpy(images)).numpy()
    np.testing.assert_array_equal(numpy_says, torch_says)
    assert numpy_says.any() and not numpy_says.all()


def test_off_leaves_light_paper_as_stored_and_auto_inverts_it():
    images = np.stack([DARK, LIGHT])
    auto = feeding.to_tensor(images, "cpu", polarity="auto")
    off = feeding.to_tensor(images, "cpu", polarity="off")
    assert torch.equal(auto[0], off[0])  # dark paper: the same under both
    assert not torch.equal(auto[1], off[1])
    assert torch.equal(auto[1], -off[1])  # inverted: 1 - x in [0, 1], so -x after standardising
    assert torch.equal(auto[1], feeding.to_tensor(np.stack([255 - LIGHT]), "cpu", polarity="off")[0])
    colour = np.stack([page(255, 0, channels=3)])
    assert torch.equal(
        feeding.to_tensor(colour, "cpu", polarity="auto"), feeding.to_tensor(colour, "cpu", polarity="off")
    )


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown polarity mode 'invert'"):
        training.FitConfig(epochs=1, batch_size=8, lr=0.01, seed=0, device=CPU, polarity="invert")
    with pytest.raises(ValueError, match="unknown polarity mode"):
        inference.predict(
            networks.build_model("cnn", 2, 1, 12), np.stack([DARK]), batch_size=8, device=CPU, polarity=""
        )


def test_fit_and_predict_see_what_the_mode_says(monkeypatch):
    """Off: the network is fed the light-paper images as stored, in training and in prediction."""
    seen = []
    embed = networks.CompactCNN.embed

    def spy(self, x):
        seen.append(x.detach().clone())
        return embed(self, x)

    monkeypatch.setattr(networks.CompactCNN, "embed", spy)
    images, labels = np.stack([LIGHT, LIGHT, DARK, DARK]), np.array([0, 0, 1, 1])
    for mode in ("auto", "off"):
        seen.clear()
        net = networks.build_model("cnn", 2, 1, 12)
        config = training.FitConfig(
            epochs=1, batch_size=4, lr=0.01, seed=0, device=CPU, polarity=mode, augment=False
        )
        training.fit(net, images, labels, config)
        # Mostly paper: a mean near -1 is dark paper, near +1 light. Auto makes all four dark.
        papers = sorted((seen[0].mean(dim=(1, 2, 3)) > 0).tolist())
        assert papers == ([False] * 4 if mode == "auto" else [False, False, True, True])
        seen.clear()
        inference.predict(net, images, batch_size=4, device=CPU, polarity=mode)
        expected = feeding.to_tensor(images, "cpu", polarity=mode)
        torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)


def test_checkpoint_without_the_key_means_auto_and_a_bad_value_is_refused(tmp_path):
    meta = {"name": "cnn", "n_classes": 2, "channels": 1, "size": 12}
    assert polarity_of(meta) == "auto"  # written before the param existed: trained as auto does
    net = networks.build_model("cnn", 2, 1, 12)
    save_checkpoint(tmp_path / "off.pt", net, meta | {"normalize_polarity": "off"})
    assert polarity_of(load_checkpoint(tmp_path / "off.pt")[1]) == "off"
    save_checkpoint(tmp_path / "bad.pt", net, meta | {"normalize_polarity": "sometimes"})
    with pytest.raises(
        CurateError, match=r"bad.pt: not a curate checkpoint .*normalize_polarity is 'sometimes'"
    ):
        load_checkpoint(tmp_path / "bad.pt")


def spy_predict(monkeypatch) -> list[str]:
    """The ``polarity`` every :func:`curate.learning.inference.predict` call is given."""
    modes = []
    predict = inference.predict

    def spy(*args, polarity, **kwargs):
        modes.append(polarity)
        return predict(*args, polarity=polarity, **kwargs)

    monkeypatch.setattr(inference, "predict", spy)
    return modes


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_the_train_stage_records_the_setting_and_evaluate_follows_the_checkpoint(workdir, monkeypatch, mode):
    train_inputs(workdir)
    set_params(workdir / "params.yaml", image={"size": 16, "normalize_polarity": mode})
    run_train(workdir, epochs=1)
    assert load_checkpoint(workdir / "models/model.pt")[1]["normalize_polarity"] == mode
    # params.yaml says the other mode now: evaluate feeds the model as it was trained.
    other = {"auto": "off", "off": "auto"}[mode]
    set_params(workdir / "params.yaml", image={"normalize_polarity": other})
    modes = spy_predict(monkeypatch)
    assert evaluate.main([]) == 0
    assert modes == [mode]


@pytest.mark.parametrize(("meta", "expected"), [({}, "auto"), ({"normalize_polarity": "off"}, "off")])
def test_augment_embeds_as_the_clean_stage_trained(workdir, monkeypatch, meta, expected):
    augment_inputs(workdir)
    if meta:  # rewrite the embedder with the key; without it, the old behaviour (auto)
        net, saved = load_checkpoint(workdir / "data/folds/embedder.pt")
        save_checkpoint(workdir / "data/folds/embedder.pt", net, saved | meta)
    modes = spy_predict(monkeypatch)
    assert augment.main([]) == 0
    assert modes and set(modes) == {expected}

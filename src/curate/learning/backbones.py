"""torchvision backbones for real photos: ResNet-18/50, EfficientNet-B0, ConvNeXt-Tiny, random or
ImageNet-initialised, with the ``.embed`` / ``.head`` interface of
:class:`curate.learning.networks.CompactCNN`.

Each network is torchvision's as published behind an input adapter, so the rest of the project
feeds it what it feeds every model (N x C x H x W, standardised as ``(x - 0.5) / 0.5`` at
``image.size``): the adapter undoes that scaling, repeats a single channel three times, resizes
(antialiased) to ``input_size`` (by default the side the ImageNet weights were trained at) with
the weights' own interpolation, and normalises with their mean and std. The square image is
resized whole, not resized then centre-cropped as torchvision's ``transforms()`` does: ingest has
already framed it, and the crop would cut its border.

Naming: ``resnet18`` with ``weights: none`` and ``input_size: null`` stays the small-input
ResNet-18 of :mod:`curate.learning.networks` (3x3 stride-1 stem, no max-pool, the images at their own size),
so existing params and checkpoints mean what they meant. Any other ``resnet18`` choice is the
published network behind the adapter.

ImageNet weights are read from torchvision's own cache (``$TORCH_HOME/hub/checkpoints``, under
the file name of the weights' URL, e.g. ``resnet18-f37072fd.pth``) with
``torch.load(weights_only=True)``; missing there, torchvision's usual download is tried, and
offline the stage stops with one line saying where to put the file. A checkpoint is rebuilt from
its meta (``name``, ``input_size``) with no weights at all: loading never downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from curate.errors import CurateError

ARCHITECTURES = ("resnet18", "resnet50", "efficientnet_b0", "convnext_tiny")
MODELS = ("cnn", *ARCHITECTURES)  # every folds.model / train.model
# The ImageNet weights each name loads, pinned (not ``DEFAULT``): ``imagenet`` names one file for good.
IMAGENET = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
    "efficientnet_b0": "EfficientNet_B0_Weights.IMAGENET1K_V1",
    "convnext_tiny": "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
}
# Where each network keeps its final Linear layer (replaced by our head; the layers before it,
# such as ConvNeXt's LayerNorm, stay in the body).
CLASSIFIER = {
    "resnet18": "fc",
    "resnet50": "fc",
    "efficientnet_b0": "classifier.1",
    "convnext_tiny": "classifier.2",
}


def imagenet_weights(name: str) -> Any:
    """The pinned torchvision weights enum of ``name`` (its URL and transforms are code: no download)."""
    from torchvision.models import get_weight

    return get_weight(IMAGENET[name])


def weights_file(name: str) -> Path:
    """Where torchvision keeps ``name``'s ImageNet weights: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    url = imagenet_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


class InputAdapter(nn.Module):
    """The project's standardised N x C x H x W -> what the ImageNet weights expect (module docstring)."""

    def __init__(self, side: int, mean: list[float], std: list[float], mode: str) -> None:
        super().__init__()
        self.side, self.mode = side, mode
        # Not persistent: they follow from the name, and the state_dict stays torchvision's keys.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit = x * 0.5 + 0.5  # undo curate.learning.feeding.standardise: back to [0, 1]
        if unit.shape[1] == 1:
            unit = unit.expand(-1, 3, -1, -1)
        if unit.shape[-2:] != (self.side, self.side):
            unit = F.interpolate(unit, size=(self.side, self.side), mode=self.mode, antialias=True)
            unit = unit.clamp(0.0, 1.0)  # bicubic overshoots; the weights saw 8-bit pixels
        return (unit - self.mean) / self.std


class TorchvisionBackbone(nn.Module):
    """A torchvision network (random init) without its last Linear, as ``body``; a new ``head``.

    The body's state_dict keys are torchvision's (``body.`` prefixed), so ImageNet weights load
    into it unchanged and :meth:`adapt_state_dict` maps a plain torchvision file onto the model.
    """

    def __init__(self, name: str, n_classes: int, input_size: int) -> None:
        super().__init__()
        import torchvision

        if name not in ARCHITECTURES:
            raise ValueError(f"unknown backbone {name!r} (expected one of {ARCHITECTURES})")
        self.name = name
        transforms = imagenet_weights(name).transforms()
        self.adapter = InputAdapter(
            input_size, transforms.mean, transforms.std, transforms.interpolation.value
        )
        self.body = getattr(torchvision.models, name)(weights=None)
        parent_path, _, last = CLASSIFIER[name].rpartition(".")
        parent = self.body.get_submodule(parent_path) if parent_path else self.body
        self.head = nn.Linear(getattr(parent, last).in_features, n_classes)
        if isinstance(parent, nn.Sequential):
            parent[int(last)] = nn.Identity()
        else:
            setattr(parent, last, nn.Identity())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.adapter(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def adapt_state_dict(self, state: dict[str, Any]) -> dict[str, Any]:
        """A torchvision state_dict's keys as this model names them: the classifier's Linear to
        ``head.``, the rest under ``body.``; keys already named so (a curate checkpoint) stay."""
        classifier = CLASSIFIER[self.name] + "."
        adapted = {}
        for key, value in state.items():
            if not isinstance(key, str):
                continue
            if key.startswith(("body.", "head.")):
                adapted[key] = value
            elif key.startswith(classifier):
                adapted["head." + key[len(classifier) :]] = value
            else:
                adapted["body." + key] = value
        return adapted


def build_backbone(name: str, n_classes: int, input_size: int | None) -> TorchvisionBackbone:
    """``name`` with random weights, fed at ``input_size`` (None: the side its ImageNet weights expect)."""
    side = input_size if input_size is not None else default_input_size(name)
    return TorchvisionBackbone(name, n_classes, side)


def default_input_size(name: str) -> int:
    """The side ``name``'s ImageNet weights were trained at (224 for all four)."""
    return int(imagenet_weights(name).transforms().crop_size[0])


def load_imagenet(net: nn.Module, key: str) -> None:
    """The pinned ImageNet weights into ``net``'s body; its head stays newly initialised."""
    if not isinstance(net, TorchvisionBackbone):
        raise CurateError(f"{key}: imagenet needs one of {', '.join(ARCHITECTURES)}")
    file = weights_file(net.name)
    if not file.is_file():
        _download(net.name, file, key)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        classifier = CLASSIFIER[net.name] + "."
        net.body.load_state_dict({k: v for k, v in state.items() if not k.startswith(classifier)})
    except Exception as exc:  # noqa: BLE001  (a bad file: unpickling, missing keys, shapes)
        reason = " ".join(str(exc).split())[:160]
        raise CurateError(
            f"{key}: {file}: not the {IMAGENET[net.name]} weights ({type(exc).__name__}: {reason}); "
            f"delete it to download again, or put the file from {imagenet_weights(net.name).url} there"
        ) from None


def _download(name: str, file: Path, key: str) -> None:
    """torchvision's usual download into its cache (hash-checked, atomic); offline: one line saying
    where to put the file."""
    url = imagenet_weights(name).url
    match = torch.hub.HASH_REGEX.search(file.name)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(file), match.group(1) if match else None, progress=True)
    except Exception as exc:  # noqa: BLE001  (URLError, timeouts, HTTP errors, a hash mismatch)
        init_key = key.rsplit(".", 1)[0] + ".init_weights"
        raise CurateError(
            f"{key}: imagenet: {file.name} is not in {file.parent} and could not be downloaded "
            f"({type(exc).__name__}); put {url} there as {file.name} (or set TORCH_HOME), "
            f"or give {init_key}: PATH to the file"
        ) from None

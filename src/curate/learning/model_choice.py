"""A ``folds`` or ``train`` section's model choice (``model``, ``weights``, ``input_size``,
``init_weights``): checked once, recorded in the checkpoint meta, built with its starting weights.

Apart from the networks (:mod:`curate.learning.networks`, :mod:`curate.learning.backbones`) and the
checkpoint files (:mod:`curate.learning.checkpoint`) because it uses both: neither imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from curate.errors import CurateError
from curate.learning.backbones import ARCHITECTURES, default_input_size, load_imagenet
from curate.learning.checkpoint import load_initial_weights
from curate.learning.networks import build_model


@dataclass(frozen=True)
class Backbone:
    """A ``folds`` or ``train`` section's model choice: ``model``, ``weights``, ``input_size``,
    ``init_weights``; ``section`` names the params in errors."""

    name: str
    weights: str = "none"
    input_size: int | None = None
    init_weights: str | None = None
    section: str = "train"

    @classmethod
    def from_params(cls, settings: Any, section: str) -> Backbone:
        return cls(settings.model, settings.weights, settings.input_size, settings.init_weights, section)

    def resolved_input_size(self) -> int | None:
        """The side the network is fed at (None: the images as they are), or a CurateError when the
        choice does not go together."""
        key = self.section
        if self.name == "cnn":
            if self.weights != "none":
                raise CurateError(
                    f"{key}.weights: {self.weights}, but {key}.model cnn has no pretrained weights "
                    f"(choose one of {', '.join(ARCHITECTURES)})"
                )
            if self.input_size is not None:
                raise CurateError(
                    f"{key}.input_size: {self.input_size}, but {key}.model cnn takes the images at "
                    "image.size (set it to null)"
                )
            return None
        if self.name == "resnet18" and self.weights == "none" and self.input_size is None:
            return None  # the small-input ResNet-18 (see curate.learning.backbones)
        return self.input_size if self.input_size is not None else default_input_size(self.name)

    def meta(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild the network (``input_size``) and how it started."""
        return {"name": self.name, "weights": self.weights, "input_size": self.resolved_input_size()}

    def initial_model(self, n_classes: int, channels: int, size: int) -> nn.Module:
        """The network before training: seeded init by the caller, then the weights asked for:
        ``init_weights`` when given (also the offline route to ImageNet weights), else ImageNet
        weights from torchvision's cache (or its download) when ``weights`` is ``imagenet``."""
        net = build_model(self.name, n_classes, channels, size, input_size=self.resolved_input_size())
        if self.init_weights:
            _load_init_weights(net, Path(self.init_weights), f"{self.section}.init_weights")
        elif self.weights == "imagenet":
            load_imagenet(net, f"{self.section}.weights")
        return net


def _load_init_weights(net: nn.Module, path: Path, key: str) -> None:
    """``path`` onto ``net`` (:func:`curate.learning.checkpoint.load_initial_weights`), saying how
    much matched."""
    loaded = load_initial_weights(net, path, key=key)
    total = len(net.state_dict())
    print(
        f"{key}: {loaded} of {total} tensors from {path}"
        + ("" if loaded == total else " (the rest as initialised)")
    )

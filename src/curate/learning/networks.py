"""The networks: a compact CNN (the default), a small-input ResNet-18, and the torchvision
backbones of :mod:`curate.learning.backbones`, all with ``.embed`` (the penultimate features) and ``.head``
(the last Linear).

The compact CNN's defaults are tuned for the folds stage's budget on CPU: 5 folds of the demo data
(about 3,900 train images of 28 x 28) in under a minute on two cores. ``benchmarks/clean.py``
measures that budget; ``benchmarks/train.py`` compares :func:`curate.learning.training.fit`'s throughput
with a bare PyTorch loop.
"""

from __future__ import annotations

import torch
from torch import nn

from curate.learning.backbones import ARCHITECTURES, build_backbone


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    # BatchNorm makes the one-cycle schedule's high peak LR safe; no conv bias (BN has one).
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class CompactCNN(nn.Module):
    """Five 3x3 conv-BN-ReLU layers, three stride-2 steps, global average pooling (~70k params).

    The stem already has stride 2: on the demo that cut CPU time 2.8x against a stride-1 stem
    at the same out-of-fold accuracy (a 28 x 28 digit loses nothing at 14 x 14). Channel counts
    are powers of two: oneDNN on CPU ran 24 channels slower than 32. Global pooling keeps the
    head independent of the image size.
    """

    def __init__(self, n_classes: int, channels: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(channels, width // 2, 2),
            _conv_bn(width // 2, width, 2),
            _conv_bn(width, width, 1),
            _conv_bn(width, 2 * width, 2),
            _conv_bn(2 * width, 2 * width, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class SmallInputResNet18(nn.Module):
    """torchvision's ResNet-18 (random init) with a 3x3 stride-1 stem and no max-pool, so a
    28 x 28 image is not reduced to 1 x 1 before the last stage."""

    def __init__(self, n_classes: int, channels: int) -> None:
        super().__init__()
        from torchvision.models import resnet18

        body = resnet18(weights=None, num_classes=n_classes)
        body.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        body.maxpool = nn.Identity()
        self.head = body.fc
        body.fc = nn.Identity()
        self.body = body

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def build_model(
    name: str, n_classes: int, channels: int, size: int, *, input_size: int | None = None
) -> nn.Module:
    """``cnn`` (the compact CNN, default), or a torchvision backbone (:mod:`curate.learning.backbones`:
    ``resnet18``, ``resnet50``, ``efficientnet_b0``, ``convnext_tiny``), random weights; every one
    has ``.embed`` and ``.head``.

    ``input_size``: the side a backbone resizes its input to (None: the side its ImageNet weights
    expect), except that ``resnet18`` with None is the small-input ResNet-18, fed the images as
    they are. ``size`` is accepted so callers need not know which models care; with global
    pooling none does. Nothing is downloaded: pretrained weights are loaded by the caller.
    """
    if name == "cnn":
        return CompactCNN(n_classes, channels)
    if name == "resnet18" and input_size is None:
        return SmallInputResNet18(n_classes, channels)
    if name in ARCHITECTURES:
        return build_backbone(name, n_classes, input_size)
    raise ValueError(f"unknown model {name!r} (expected 'cnn' or one of {ARCHITECTURES})")

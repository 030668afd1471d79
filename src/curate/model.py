"""The image classifier shared by the ``clean`` stage (K-fold out-of-sample probabilities for
cleanlab) and the ``train`` stage: a compact CNN (or a small-input ResNet-18), plus the
training and prediction loops.

The defaults are tuned for the clean stage's budget on CPU: 5 folds of the demo data
(about 3,900 train images of 28 x 28) in under a minute on two cores. See
``benchmarks/clean_proto.py`` for the measurements behind them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

# Augmentation ranges, drawn per image per step: small enough that a digit stays the digit
# it was, large enough that the K-fold models stop memorising pixel positions (the noisy
# labels are what they would memorise next).
MAX_SHIFT = 2.0  # pixels
MAX_ROTATE = 10.0  # degrees
MAX_SCALE = 0.10  # +-10 %
WEIGHT_DECAY = 5e-4


def pick_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU; otherwise the named device as given."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


def build_model(name: str, n_classes: int, channels: int, size: int) -> nn.Module:
    """``cnn`` (the compact CNN, default) or ``resnet18``; both have ``.embed`` and ``.head``.

    ``size`` is accepted so callers need not know which models care; with global pooling
    neither does.
    """
    if name == "cnn":
        return CompactCNN(n_classes, channels)
    if name == "resnet18":
        return SmallInputResNet18(n_classes, channels)
    raise ValueError(f"unknown model {name!r} (expected 'cnn' or 'resnet18')")


def _to_unit(batch: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [0, 1], single-channel ink made light.

    Grayscale collections mix ink polarities (the demo's sklearn group is dark ink on light
    paper, MNIST the reverse). A CNN does not transfer between the two, so a small group in
    the other polarity is learnt from its few own samples only: in the measurements its
    flipped labels were mostly missed. Inverting any single-channel image whose border is
    brighter than mid-grey puts every image in one polarity. Colour images are left as is.
    """
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[1] == 1:
        border = torch.cat([x[:, 0, 0], x[:, 0, -1], x[:, 0, :, 0], x[:, 0, :, -1]], dim=1)
        light = border.mean(dim=1) > 0.5
        x = torch.where(light.view(-1, 1, 1, 1), 1.0 - x, x)
    return x


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return x.sub(0.5).div_(0.5).contiguous(memory_format=torch.channels_last)


def to_tensor(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 N x H x W x C numpy -> the float N x C x H x W tensor the models expect."""
    return _standardise(_to_unit(_from_numpy(images, device)))


def _from_numpy(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    # np.array copies, so a read-only memmap never reaches torch.from_numpy (which warns).
    return torch.from_numpy(np.array(images, dtype=np.uint8)).to(device)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift for the whole batch in one affine grid_sample.

    The random numbers come from a CPU generator, so a seed gives the same draws on any
    device; ``border`` padding repeats the background instead of inventing a frame.
    """
    n, _, h, w = x.shape
    draw = (torch.rand(n, 4, generator=generator) * 2 - 1).to(x.device)
    angle = draw[:, 0] * math.radians(MAX_ROTATE)
    scale = 1 + draw[:, 1] * MAX_SCALE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift_x, shift_y = draw[:, 2] * MAX_SHIFT * 2 / w, draw[:, 3] * MAX_SHIFT * 2 / h
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    )
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def fit(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    sample_weights: np.ndarray | None = None,
    augment: bool = True,
    progress: str | None = None,
) -> list[dict]:
    """Train ``model`` in place with AdamW and a one-cycle LR (peak ``lr``); per-epoch stats.

    The images stay uint8 on ``device`` (a quarter of the float size) and each batch is
    converted there. On CPU the result is a function of ``seed``: same bytes twice.
    """
    torch.manual_seed(seed)  # weight init happened before; this seeds dropout-free ops too
    generator = torch.Generator().manual_seed(seed)
    cuda = device.type == "cuda"
    model.to(device).to(memory_format=torch.channels_last)
    pixels = _from_numpy(images, device)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    weights = None
    if sample_weights is not None:
        weights = torch.as_tensor(np.asarray(sample_weights), dtype=torch.float32, device=device)
    n = len(targets)
    steps = math.ceil(n / batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    # One-cycle: a short warm-up then annealing to ~0 lets a few epochs converge, which is
    # what the clean stage's budget (K models) allows.
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=max(epochs * steps, 1), pct_start=0.25
    )
    history = []
    model.train()
    bar = tqdm(total=epochs * steps, desc=progress, disable=progress is None, leave=False)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            x = _to_unit(pixels[index])
            if augment:
                x = _augment(x, generator)
            x, y = _standardise(x), targets[index]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = model(x)
            losses = F.cross_entropy(logits.float(), y, reduction="none")
            if weights is None:
                loss = losses.mean()
            else:
                w = weights[index]
                loss = (losses * w).sum() / w.sum().clamp_min(1e-12)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            # Accumulate on the device: .item() per step would sync a GPU every batch.
            loss_sum += losses.detach().sum()
            correct += (logits.argmax(1) == y).sum()
            bar.update()
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum.item() / n,
                "train_accuracy": correct.item() / n,
            }
        )
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}")
    bar.close()
    return history


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, *, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N x K) and penultimate embeddings (N x D), float32, eval mode."""
    model.to(device).eval()
    cuda = device.type == "cuda"
    probs, embeddings = [], []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size], device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            features = model.embed(x)
            logits = model.head(features)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        embeddings.append(features.float().cpu())
    if not probs:  # no images: keep the shapes' widths so callers can still concatenate
        width = model.head.in_features
        return np.zeros((0, model.head.out_features), np.float32), np.zeros((0, width), np.float32)
    return torch.cat(probs).numpy(), torch.cat(embeddings).numpy()

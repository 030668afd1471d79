"""The image classifier shared by the ``clean`` stage (K-fold out-of-sample probabilities for
cleanlab) and the ``train`` stage: a compact CNN (or a small-input ResNet-18), plus the
training and prediction loops.

The defaults are tuned for the clean stage's budget on CPU: 5 folds of the demo data
(about 3,900 train images of 28 x 28) in under a minute on two cores. See
``benchmarks/clean_proto.py`` for the measurements behind them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curate.errors import CurateError

# Augmentation ranges, drawn per image per step: small enough that a digit stays the digit
# it was, large enough that the K-fold models stop memorising pixel positions (the noisy
# labels are what they would memorise next).
MAX_SHIFT = 2.0  # pixels
MAX_ROTATE = 10.0  # degrees
MAX_SCALE = 0.10  # +-10 %
WEIGHT_DECAY = 5e-4


def _available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return mps is not None and mps.is_available()
    return kind == "cpu"


def pick_device(preference: str = "auto", key: str = "device") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU; otherwise the named device, which must exist.

    ``key`` names the param in the error (``train.device = 'cuda', but this machine has no cuda``).
    """
    if preference == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if _available(kind)))
    if not _available(preference):
        raise CurateError(f"{key} = {preference!r}, but this machine has no {preference}")
    return torch.device(preference)


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


class _NoBar:
    """Stands in for tqdm when no bar is asked for: the GPU check runs where only torch is installed."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **_: object) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str | None):
    if desc is None:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def _place(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The uint8 images on ``device`` when they fit in half its free memory, else in pinned host memory.

    uint8 is a quarter of float32, so the demo (10k x 28 x 28) takes 8 MB of a GPU: batches
    are then gathered on the GPU with no host round trip per step.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes > free // 2:
            return _from_numpy(images, "cpu").pin_memory()
    return _from_numpy(images, device)


def _batch_loss(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, cuda: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step shared by training and validation: (weighted mean loss, per-sample losses, logits).

    bf16 autocast on CUDA (the convolutions run on tensor cores; the loss stays float32).
    """
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        logits = net(x)
    losses = F.cross_entropy(logits.float(), y, reduction="none")
    if w is None:
        return losses.mean(), losses, logits
    return (losses * w).sum() / w.sum().clamp_min(1e-12), losses, logits


@torch.no_grad()
def _validate(
    net: nn.Module,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    batch_size: int,
    device: torch.device,
) -> tuple[float, float]:
    """(loss, accuracy) on held-out data, weighted by ``weights`` when given, in eval mode."""
    net.eval()
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), device=device)
    for start in range(0, len(targets), batch_size):
        x = _standardise(_to_unit(pixels[start : start + batch_size].to(device, non_blocking=True)))
        y = targets[start : start + batch_size]
        w = torch.ones_like(y, dtype=torch.float32) if weights is None else weights[start : start + len(y)]
        _, losses, logits = _batch_loss(net, x, y, None, device.type == "cuda")
        loss_sum += (losses * w).sum()
        hits += ((logits.argmax(1) == y).float() * w).sum()
    net.train()
    total = float(len(targets) if weights is None else weights.sum().item())
    return loss_sum.item() / max(total, 1e-12), hits.item() / max(total, 1e-12)


def epoch_order(n: int, generator: torch.Generator, weights: torch.Tensor | None = None) -> torch.Tensor:
    """One epoch's sample indices: a permutation of ``range(n)``, or with ``weights`` ``n`` draws
    with replacement, each index with probability proportional to its weight (what
    ``torch.utils.data.WeightedRandomSampler`` yields; drawn here so the indices stay a tensor
    that can index the data on the device)."""
    if weights is None:
        return torch.randperm(n, generator=generator)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


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
    weighting: str = "loss",
    augment: bool = True,
    validation: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    patience: int | None = None,
    compile: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
    progress: str | None = None,
) -> list[dict]:
    """Train ``model`` in place with AdamW and a one-cycle LR (peak ``lr``); per-epoch stats.

    ``sample_weights`` (N,) act per ``weighting``: ``loss`` weighs each sample's
    cross-entropy (the batch loss is the weighted mean); ``sampler`` draws each epoch's
    N samples with replacement, with probability proportional to weight (what
    ``torch.utils.data.WeightedRandomSampler`` does, drawn from the seeded generator), and
    takes the plain mean. ``validation`` = (images, labels, weights or None): evaluated
    after every epoch; then the model keeps the weights of the epoch with the lowest
    validation loss, and with ``patience`` training stops once that many epochs have
    passed without a new lowest. ``on_epoch`` receives each epoch's stats as they come.

    The images stay uint8 on ``device`` (a quarter of the float size) and each batch is
    converted there. On CPU the result is a function of ``seed``: same bytes twice. Each
    stats dict holds ``epoch``, ``train_loss``, ``train_accuracy``, ``seconds`` (training
    only, validation excluded), ``images`` (seen this epoch), and with validation
    ``val_loss``, ``val_accuracy`` and ``best``.
    """
    if weighting not in ("loss", "sampler"):
        raise ValueError(f"unknown weighting {weighting!r} (expected 'loss' or 'sampler')")
    torch.manual_seed(seed)  # weight init happened before; this seeds dropout-free ops too
    generator = torch.Generator().manual_seed(seed)
    cuda = device.type == "cuda"
    model.to(device).to(memory_format=torch.channels_last)
    # torch.compile traces on the first batch (seconds to minutes): worth it on a GPU for
    # long runs, rarely on a CPU. The compiled module shares the model's parameters.
    net = torch.compile(model) if compile else model
    pixels = _place(images, device)
    # On a CPU, converting to float once (4x the bytes) spares every step the uint8 -> float
    # conversion; a GPU (or a set over 2 GB as floats) keeps the compact uint8 copy.
    converted = device.type == "cpu" and images.nbytes * 4 <= 2**31
    if converted:
        pixels = _to_unit(pixels)
    targets = torch.as_tensor(np.array(labels), dtype=torch.long, device=device)
    weights = None
    if sample_weights is not None:
        weights = torch.as_tensor(np.array(sample_weights), dtype=torch.float32, device=device)
    draw_weights = weights.cpu() if weights is not None and weighting == "sampler" else None
    loss_weights = weights if weighting == "loss" else None
    if validation is not None:
        val_pixels = _place(validation[0], device)
        val_targets = torch.as_tensor(np.array(validation[1]), dtype=torch.long, device=device)
        val_weights = None
        if validation[2] is not None:
            val_weights = torch.as_tensor(np.array(validation[2]), dtype=torch.float32, device=device)
    n = len(targets)
    steps = math.ceil(n / batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    # One-cycle: a short warm-up then annealing to ~0 lets a few epochs converge, which is
    # what the clean stage's budget (K models) allows. OneCycleLR divides by its phase
    # lengths: at least 8 steps keeps both non-empty on tiny data (a shorter run just
    # ends mid-schedule).
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=lr, total_steps=max(epochs * steps, 8), pct_start=0.25
    )
    history: list[dict] = []
    best_loss, best_state = math.inf, None
    model.train()
    bar = _progress_bar(epochs * steps, progress)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        order = epoch_order(n, generator, draw_weights).to(pixels.device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            x = pixels[index] if converted else _to_unit(pixels[index].to(device, non_blocking=True))
            index = index.to(device)
            if augment:
                x = _augment(x, generator)
            x, y = _standardise(x), targets[index]
            loss, losses, logits = _batch_loss(
                net, x, y, None if loss_weights is None else loss_weights[index], cuda
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            # Accumulate on the device: .item() per step would sync a GPU every batch.
            loss_sum += losses.detach().sum()
            correct += (logits.argmax(1) == y).sum()
            bar.update()
        stats = {"epoch": epoch, "train_loss": loss_sum.item() / n, "train_accuracy": correct.item() / n}
        stats |= {"seconds": time.perf_counter() - started, "images": n}
        if validation is not None:
            stats["val_loss"], stats["val_accuracy"] = _validate(
                net, val_pixels, val_targets, val_weights, batch_size=max(batch_size, 512), device=device
            )
            stats["best"] = stats["val_loss"] < best_loss
            if stats["best"]:
                best_loss = stats["val_loss"]
                best_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
        history.append(stats)
        bar.set_postfix(
            loss=f"{stats['train_loss']:.3f}",
            **({"val_loss": f"{stats['val_loss']:.3f}"} if validation is not None else {}),
        )
        if on_epoch is not None:
            on_epoch(stats)
        since_best = epoch - max((s["epoch"] for s in history if s.get("best")), default=epoch)
        if patience is not None and validation is not None and since_best >= patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
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

"""The image classifier shared by the ``clean`` stage (K-fold out-of-sample probabilities for
cleanlab) and the ``train`` stage: a compact CNN (or a small-input ResNet-18), plus the
training and prediction loops.

The defaults are tuned for the clean stage's budget on CPU: 5 folds of the demo data
(about 3,900 train images of 28 x 28) in under a minute on two cores.
``benchmarks/clean.py`` measures that budget (the stage's wall time and its detection F1
against the demo's known label flips); ``benchmarks/train.py`` compares :func:`fit`'s
throughput with a bare PyTorch loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curate.errors import CurateError
from curate.polarity import above_half, check_mode

# Augmentation ranges, drawn per image per step: small enough that a digit stays the digit
# it was, large enough that the K-fold models stop memorising pixel positions (the noisy
# labels are what they would memorise next).
MAX_SHIFT = 2.0  # pixels at SHIFT_REFERENCE_SIZE, in proportion at other sizes (4.6 at 64 x 64)
SHIFT_REFERENCE_SIZE = 28  # the demo's side, where MAX_SHIFT was tuned
MAX_ROTATE = 10.0  # degrees
MAX_SCALE = 0.10  # +-10 %
WEIGHT_DECAY = 5e-4
# The progress bar's figures: its label -> the stats key.
POSTFIX = {"loss": "train_loss", "val_loss": "val_loss"}


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


def environment(device: torch.device) -> dict[str, object]:
    """What computed a stage's floats, for its report: CPU training is bit for bit on one machine,
    not across CPUs (PyTorch picks other kernels on an AVX-512 CPU than on an AVX2 one)."""
    described: dict[str, object] = {"torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    else:
        described["cpu_kernels"] = torch.backends.cpu.get_cpu_capability()
        described["threads"] = torch.get_num_threads()
    return described


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


def light_background_tensor(batch: torch.Tensor) -> torch.Tensor:
    """:func:`curate.polarity.light_background` on a uint8 N x H x W x C tensor: bool (N,).

    The same rule in the same integer arithmetic, so the two agree on every image.
    """
    n, _, _, channels = batch.shape
    if channels != 1 or n == 0:
        return torch.zeros(n, dtype=torch.bool, device=batch.device)
    plane = batch[..., 0]
    border = torch.cat([plane[:, 0], plane[:, -1], plane[:, :, 0], plane[:, :, -1]], dim=1)
    return above_half(border.sum(dim=1, dtype=torch.int64), border.shape[1])


def _to_unit(batch: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [0, 1]; with ``mode`` ``auto``, the
    single-channel images on light paper inverted (see :mod:`curate.polarity`).

    In the measurements on the demo, the sklearn group's flipped labels were mostly missed
    without the inversion: its few dark-on-light digits were learnt from their own samples only.
    """
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    if mode == "auto" and x.shape[1] == 1:
        light = light_background_tensor(batch)
        x = torch.where(light.view(-1, 1, 1, 1), 1.0 - x, x)
    return x


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return x.sub(0.5).div_(0.5).contiguous(memory_format=torch.channels_last)


def to_tensor(images: np.ndarray, device: torch.device | str, *, polarity: str) -> torch.Tensor:
    """uint8 N x H x W x C numpy -> the float N x C x H x W tensor the models expect.

    ``polarity``: ``image.normalize_polarity`` (``auto`` or ``off``), as the model was trained.
    """
    return _standardise(_to_unit(_from_numpy(images, device), polarity))


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
    # The largest shift is the same fraction of the side at any size: MAX_SHIFT pixels at 28 x 28
    # exactly (2.0 * 28 / 28), so the demo's draws are bit for bit the ones it was tuned with.
    max_x, max_y = MAX_SHIFT * w / SHIFT_REFERENCE_SIZE, MAX_SHIFT * h / SHIFT_REFERENCE_SIZE
    shift_x, shift_y = draw[:, 2] * max_x * 2 / w, draw[:, 3] * max_y * 2 / h
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


class Progress(Protocol):
    """What :func:`fit` asks of a progress bar: tqdm's, or :class:`_NoBar`."""

    def update(self, n: int = 1) -> object: ...

    def set_postfix(self, **kwargs: object) -> object: ...

    def close(self) -> object: ...


class _NoBar:
    """Stands in for tqdm when no bar is asked for: the GPU check runs where only torch is installed."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **_: object) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str | None) -> Progress:
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
    polarity: str,
) -> tuple[float, float]:
    """(loss, accuracy) on held-out data, weighted by ``weights`` when given, in eval mode."""
    net.eval()
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), device=device)
    for start in range(0, len(targets), batch_size):
        x = _standardise(_to_unit(pixels[start : start + batch_size].to(device, non_blocking=True), polarity))
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


@dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` trains: AdamW with a one-cycle LR peaking at ``lr``, ``epochs`` passes
    of ``batch_size``, seeded by ``seed`` (the batch order and the augmentation draws).

    ``weighting`` says how sample weights act: ``loss`` (weighted cross-entropy) or ``sampler``
    (draws proportional to weight). ``augment``: random shift/rotate/scale per image per step.
    ``patience``: with validation, stop once that many epochs bring no lower validation loss.
    ``compile``: run the model through ``torch.compile``. ``polarity``: ``image.normalize_polarity``
    (``auto`` inverts single-channel images on light paper, ``off`` keeps them as stored);
    :func:`predict` must then be given the same.
    """

    epochs: int
    batch_size: int
    lr: float
    seed: int
    device: torch.device
    polarity: str
    weighting: str = "loss"
    augment: bool = True
    patience: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.weighting not in ("loss", "sampler"):
            raise ValueError(f"unknown weighting {self.weighting!r} (expected 'loss' or 'sampler')")
        check_mode(self.polarity)


def _placed(model: nn.Module, config: FitConfig) -> nn.Module:
    """``model`` moved to the device in channels_last; what runs it (compiled when asked)."""
    model.to(config.device).to(memory_format=torch.channels_last)
    # torch.compile traces on the first batch (seconds to minutes): worth it on a GPU for
    # long runs, rarely on a CPU. The compiled module shares the model's parameters.
    return torch.compile(model) if config.compile else model


@dataclass
class _TrainSet:
    """The training data as :func:`fit` keeps it: the images stay uint8 on the device (a quarter
    of the float size) and each batch is converted there, except on a CPU (below)."""

    pixels: torch.Tensor  # uint8 N x H x W x C, or float N x C x H x W in [0, 1] when converted
    converted: bool
    targets: torch.Tensor  # (N,) long
    draw_weights: torch.Tensor | None  # (N,) on the CPU: weighting sampler
    loss_weights: torch.Tensor | None  # (N,) on the device: weighting loss

    @property
    def n(self) -> int:
        return len(self.targets)


def _as_tensor(values: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # np.array copies: pandas hands out read-only views, which torch warns about.
    return torch.as_tensor(np.array(values), dtype=dtype, device=device)


def _train_set(
    images: np.ndarray, labels: np.ndarray, sample_weights: np.ndarray | None, config: FitConfig
) -> _TrainSet:
    device = config.device
    pixels = _place(images, device)
    # On a CPU, converting to float once (4x the bytes) spares every step the uint8 -> float
    # conversion; a GPU (or a set over 2 GB as floats) keeps the compact uint8 copy.
    converted = device.type == "cpu" and images.nbytes * 4 <= 2**31
    if converted:
        pixels = _to_unit(pixels, config.polarity)
    targets = _as_tensor(labels, torch.long, device)
    weights = None if sample_weights is None else _as_tensor(sample_weights, torch.float32, device)
    return _TrainSet(
        pixels,
        converted,
        targets,
        draw_weights=weights.cpu() if weights is not None and config.weighting == "sampler" else None,
        loss_weights=weights if config.weighting == "loss" else None,
    )


class _Optimiser:
    """AdamW and its one-cycle LR schedule, stepped together once per batch."""

    def __init__(self, model: nn.Module, config: FitConfig, steps_per_epoch: int) -> None:
        self.adamw = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=WEIGHT_DECAY)
        # One-cycle: a short warm-up then annealing to ~0 lets a few epochs converge, which is
        # what the clean stage's budget (K models) allows. OneCycleLR divides by its phase
        # lengths: at least 8 steps keeps both non-empty on tiny data (a shorter run just
        # ends mid-schedule).
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(
            self.adamw, max_lr=config.lr, total_steps=max(config.epochs * steps_per_epoch, 8), pct_start=0.25
        )

    def step(self, loss: torch.Tensor) -> None:
        self.adamw.zero_grad(set_to_none=True)
        loss.backward()
        self.adamw.step()
        self.schedule.step()


class _Validation:
    """Validation after each epoch, and early stopping on its loss: the lowest loss so far, the
    weights of that epoch, and when to give up."""

    def __init__(
        self, validation: tuple[np.ndarray, np.ndarray, np.ndarray | None], config: FitConfig
    ) -> None:
        images, labels, weights = validation
        self.pixels = _place(images, config.device)
        self.targets = _as_tensor(labels, torch.long, config.device)
        self.weights = None if weights is None else _as_tensor(weights, torch.float32, config.device)
        self.config = config
        self.loss = math.inf
        self.epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def score(self, net: nn.Module, model: nn.Module, stats: dict) -> None:
        """Add ``val_loss``, ``val_accuracy`` and ``best`` to ``stats``; on a new lowest loss,
        keep a copy of ``model``'s weights."""
        stats["val_loss"], stats["val_accuracy"] = _validate(
            net,
            self.pixels,
            self.targets,
            self.weights,
            batch_size=max(self.config.batch_size, 512),
            device=self.config.device,
            polarity=self.config.polarity,
        )
        stats["best"] = stats["val_loss"] < self.loss
        if stats["best"]:
            self.loss, self.epoch = stats["val_loss"], stats["epoch"]
            self.state = {key: value.detach().clone() for key, value in model.state_dict().items()}

    def should_stop(self, epoch: int) -> bool:
        since_best = epoch - (self.epoch if self.epoch is not None else epoch)
        return self.config.patience is not None and since_best >= self.config.patience


def _epoch(
    net: nn.Module,
    data: _TrainSet,
    optimiser: _Optimiser,
    generator: torch.Generator,
    config: FitConfig,
    bar: Progress,
) -> dict:
    """One pass over ``data`` in a seeded order; stats without ``epoch``."""
    started = time.perf_counter()
    device, n = config.device, data.n
    order = epoch_order(n, generator, data.draw_weights).to(data.pixels.device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, n, config.batch_size):
        index = order[start : start + config.batch_size]
        x = (
            data.pixels[index]
            if data.converted
            else _to_unit(data.pixels[index].to(device, non_blocking=True), config.polarity)
        )
        index = index.to(device)
        if config.augment:
            x = _augment(x, generator)
        x, y = _standardise(x), data.targets[index]
        w = None if data.loss_weights is None else data.loss_weights[index]
        loss, losses, logits = _batch_loss(net, x, y, w, device.type == "cuda")
        optimiser.step(loss)
        # Accumulate on the device: .item() per step would sync a GPU every batch.
        loss_sum += losses.detach().sum()
        correct += (logits.argmax(1) == y).sum()
        bar.update()
    stats = {"train_loss": loss_sum.item() / n, "train_accuracy": correct.item() / n}
    return stats | {"seconds": time.perf_counter() - started, "images": n}


def fit(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    config: FitConfig,
    *,
    sample_weights: np.ndarray | None = None,
    validation: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: str | None = None,
) -> list[dict]:
    """Train ``model`` in place as ``config`` says; per-epoch stats.

    ``sample_weights`` (N,) act per ``config.weighting``: ``loss`` weighs each sample's
    cross-entropy (the batch loss is the weighted mean); ``sampler`` draws each epoch's N
    samples with replacement in proportion to weight (:func:`epoch_order`) and takes the
    plain mean. ``validation`` = (images, labels, weights or None), evaluated after every
    epoch: the model ends with the weights of the epoch with the lowest validation loss, and
    with ``config.patience`` training stops once that many epochs have passed without a new
    lowest. ``on_epoch`` receives each epoch's stats as they come; ``progress`` names a tqdm
    bar (None: no bar).

    On CPU the result is a function of ``config.seed``: same bytes twice. Each stats dict
    holds ``epoch``, ``train_loss``, ``train_accuracy``, ``seconds`` (training only,
    validation excluded), ``images`` (seen this epoch), and with validation ``val_loss``,
    ``val_accuracy`` and ``best``.
    """
    torch.manual_seed(config.seed)  # weight init happened before; this seeds dropout-free ops too
    generator = torch.Generator().manual_seed(config.seed)
    net = _placed(model, config)
    data = _train_set(images, labels, sample_weights, config)
    checks = None if validation is None else _Validation(validation, config)
    steps = math.ceil(data.n / config.batch_size)
    optimiser = _Optimiser(model, config, steps)
    history: list[dict] = []
    model.train()
    bar = _progress_bar(config.epochs * steps, progress)
    for epoch in range(1, config.epochs + 1):
        stats = {"epoch": epoch} | _epoch(net, data, optimiser, generator, config, bar)
        if checks is not None:
            checks.score(net, model, stats)
        history.append(stats)
        bar.set_postfix(**{name: f"{stats[key]:.3f}" for name, key in POSTFIX.items() if key in stats})
        if on_epoch is not None:
            on_epoch(stats)
        if checks is not None and checks.should_stop(epoch):
            break
    bar.close()
    if checks is not None and checks.state is not None:
        model.load_state_dict(checks.state)
    return history


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, *, batch_size: int, device: torch.device, polarity: str
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N x K) and penultimate embeddings (N x D), float32, eval mode.

    ``polarity``: what the model was trained with (``FitConfig.polarity``; a checkpoint's meta).
    """
    check_mode(polarity)
    model.to(device).eval()
    cuda = device.type == "cuda"
    probs, embeddings = [], []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size], device, polarity=polarity)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            features = model.embed(x)
            logits = model.head(features)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        embeddings.append(features.float().cpu())
    if not probs:  # no images: keep the shapes' widths so callers can still concatenate
        width = model.head.in_features
        return np.zeros((0, model.head.out_features), np.float32), np.zeros((0, width), np.float32)
    return torch.cat(probs).numpy(), torch.cat(embeddings).numpy()

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
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

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
# data_on_device auto on a CPU: the set is converted to float once when that copy fits in this
# many bytes (every step then skips the uint8 -> float conversion), else read batch by batch.
CPU_FLOAT_BUDGET = 2**31
PREFETCH = 2  # batches the background reader keeps ready ahead of the one in use


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


def build_model(
    name: str, n_classes: int, channels: int, size: int, *, input_size: int | None = None
) -> nn.Module:
    """``cnn`` (the compact CNN, default), or a torchvision backbone (:mod:`curate.backbones`:
    ``resnet18``, ``resnet50``, ``efficientnet_b0``, ``convnext_tiny``), random weights; every one
    has ``.embed`` and ``.head``.

    ``input_size``: the side a backbone resizes its input to (None: the side its ImageNet weights
    expect), except that ``resnet18`` with None is the small-input ResNet-18, fed the images as
    they are. ``size`` is accepted so callers need not know which models care; with global
    pooling none does. Nothing is downloaded: pretrained weights are loaded by the caller.
    """
    from curate.backbones import ARCHITECTURES, build_backbone

    if name == "cnn":
        return CompactCNN(n_classes, channels)
    if name == "resnet18" and input_size is None:
        return SmallInputResNet18(n_classes, channels)
    if name in ARCHITECTURES:
        return build_backbone(name, n_classes, input_size)
    raise ValueError(f"unknown model {name!r} (expected 'cnn' or one of {ARCHITECTURES})")


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


def _augment(
    x: torch.Tensor, generator: torch.Generator, share: tuple[int, int] | None = None
) -> torch.Tensor:
    """Random rotation, scale and shift for the whole batch in one affine grid_sample.

    The random numbers come from a CPU generator, so a seed gives the same draws on any
    device; ``border`` padding repeats the background instead of inventing a frame. ``share``
    = (offset, batch size): ``x`` is that slice of a batch split over processes; every process
    draws for the whole batch and keeps its rows, so each image gets the draw it would get in
    one process.
    """
    n, _, h, w = x.shape
    draw = torch.rand(n if share is None else share[1], 4, generator=generator)
    if share is not None:
        draw = draw[share[0] : share[0] + n]
    draw = (draw * 2 - 1).to(x.device)
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


class Images(Protocol):
    """uint8 ``N x H x W x C`` images as :func:`fit` and :func:`predict` take them: a numpy array
    (a memory-map too), or a lazy source such as :class:`curate.dataset.ImageRows`, which reads the
    rows asked of its ``read(index)`` and materialises under ``np.asarray``."""

    shape: tuple[int, ...]
    nbytes: int

    def __len__(self) -> int: ...

    def __getitem__(self, key: Any) -> Any: ...


def _place(images: Images, device: torch.device) -> torch.Tensor:
    """The uint8 images on ``device`` when they fit in half its free memory, else in pinned host memory.

    uint8 is a quarter of float32, so the demo (10k x 28 x 28) takes 8 MB of a GPU: batches
    are then gathered on the GPU with no host round trip per step.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes > free // 2:
            return _from_numpy(images, "cpu").pin_memory()
    return _from_numpy(images, device)


def keeps_in_memory(images: Images, config: FitConfig) -> bool:
    """Whether :func:`fit` copies ``images`` whole onto the device (the fast path) or reads them
    batch by batch (streams): ``config.data_on_device`` ``always`` or ``never``; ``auto`` keeps
    them when they fit: in half the free GPU memory as uint8, on a CPU as a float copy within
    :data:`CPU_FLOAT_BUDGET` (another device: always)."""
    if config.data_on_device != "auto":
        return config.data_on_device == "always"
    if config.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(config.device)
        return images.nbytes <= free // 2
    if config.device.type == "cpu":
        return images.nbytes * 4 <= CPU_FLOAT_BUDGET
    return True


def _read_rows(images: Images, index: np.ndarray | slice) -> np.ndarray:
    """Rows ``index`` of ``images``, in that order, as a new uint8 array.

    An index array is read in sorted order (a memory-map then reads its pages in sequence)
    and put back in the order asked; a lazy source reads its own way (``read``).
    """
    if isinstance(index, slice):
        return np.array(images[index], dtype=np.uint8)
    read = getattr(images, "read", None)
    if read is not None:
        return read(index)
    order = np.argsort(index, kind="stable")
    out = np.empty((len(index), *images.shape[1:]), dtype=np.uint8)
    out[order] = images[index[order]]
    return out


def _prefetched(images: Images, batches: Sequence[np.ndarray | slice], pin: bool) -> Iterator[torch.Tensor]:
    """The ``batches`` of ``images`` as uint8 CPU tensors, read by a background thread up to
    :data:`PREFETCH` batches ahead, so the device does not wait on the disk. ``pin``: in pinned
    memory, so the copy to a GPU runs asynchronously."""

    def load(index: np.ndarray | slice) -> torch.Tensor:
        batch = torch.from_numpy(_read_rows(images, index))
        return batch.pin_memory() if pin else batch

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate-reader") as reader:
        pending: deque[Future[torch.Tensor]] = deque()
        for index in batches:
            pending.append(reader.submit(load, index))
            if len(pending) > PREFETCH:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _batches(pixels: torch.Tensor | Images, n: int, batch_size: int, pin: bool) -> Iterator[torch.Tensor]:
    """Consecutive uint8 batches of ``n`` images: slices of a placed tensor, or read from a source."""
    starts = range(0, n, batch_size)
    if isinstance(pixels, torch.Tensor):
        return (pixels[start : start + batch_size] for start in starts)
    return _prefetched(pixels, [slice(start, start + batch_size) for start in starts], pin)


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
    pixels: torch.Tensor | Images,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    batch_size: int,
    device: torch.device,
    polarity: str,
) -> tuple[float, float]:
    """(loss, accuracy) on held-out data, weighted by ``weights`` when given, in eval mode.

    ``pixels``: the uint8 images placed by :func:`_place`, or a source to read batch by batch.
    """
    net.eval()
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), device=device)
    batches = _batches(pixels, len(targets), batch_size, pin=device.type == "cuda")
    for start, batch in zip(range(0, len(targets), batch_size), batches, strict=True):
        x = _standardise(_to_unit(batch.to(device, non_blocking=True), polarity))
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
    :func:`predict` must then be given the same. ``data_on_device``: copy the whole set onto the
    device (``always``), read it batch by batch (``never``), or whichever fits (``auto``, see
    :func:`keeps_in_memory`); the results are the same. ``distributed``: this process is one of
    a torch.distributed process group that trains one model together (DDP, see :func:`fit`).
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
    data_on_device: str = "auto"
    distributed: bool = False

    def __post_init__(self) -> None:
        if self.weighting not in ("loss", "sampler"):
            raise ValueError(f"unknown weighting {self.weighting!r} (expected 'loss' or 'sampler')")
        if self.data_on_device not in ("auto", "always", "never"):
            raise ValueError(f"unknown data_on_device {self.data_on_device!r} (expected auto, always, never)")
        check_mode(self.polarity)


def _placed(model: nn.Module, config: FitConfig) -> nn.Module:
    """``model`` moved to the device in channels_last; what runs it (wrapped in DDP when
    distributed, compiled when asked)."""
    model.to(config.device).to(memory_format=torch.channels_last)
    net = _data_parallel(model, config.device) if config.distributed else model
    # torch.compile traces on the first batch (seconds to minutes): worth it on a GPU for
    # long runs, rarely on a CPU. The compiled module shares the model's parameters.
    return torch.compile(net) if config.compile else net


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the process group: it broadcasts rank 0's weights once, then
    all-reduces (averages) the gradients in buckets while the backward pass runs."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _world(config: FitConfig) -> tuple[int, int]:
    """(processes, this one's rank) training the model: (1, 0) unless ``config.distributed``."""
    if not config.distributed:
        return 1, 0
    return torch.distributed.get_world_size(), torch.distributed.get_rank()


@dataclass
class _TrainSet:
    """The training data as :func:`fit` keeps it: the images stay uint8 on the device (a quarter
    of the float size) and each batch is converted there, except on a CPU (below); or, streamed,
    they stay where they are (``source``) and each batch is read from there."""

    pixels: torch.Tensor | None  # uint8 N x H x W x C, or float N x C x H x W in [0, 1]; None: streamed
    converted: bool
    targets: torch.Tensor  # (N,) long
    draw_weights: torch.Tensor | None  # (N,) on the CPU: weighting sampler
    loss_weights: torch.Tensor | None  # (N,) on the device: weighting loss
    source: Images | None = None  # streamed: the images, read batch by batch

    @property
    def n(self) -> int:
        return len(self.targets)


def _as_tensor(values: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # np.array copies: pandas hands out read-only views, which torch warns about.
    return torch.as_tensor(np.array(values), dtype=dtype, device=device)


def _train_set(
    images: Images, labels: np.ndarray, sample_weights: np.ndarray | None, config: FitConfig
) -> _TrainSet:
    device = config.device
    targets = _as_tensor(labels, torch.long, device)
    weights = None if sample_weights is None else _as_tensor(sample_weights, torch.float32, device)
    draw_weights = weights.cpu() if weights is not None and config.weighting == "sampler" else None
    loss_weights = weights if config.weighting == "loss" else None
    if not keeps_in_memory(images, config):
        return _TrainSet(None, False, targets, draw_weights, loss_weights, source=images)
    pixels = _place(images, device)
    # On a CPU, converting to float once (4x the bytes) spares every step the uint8 -> float
    # conversion; a GPU (or a set over 2 GB as floats, data_on_device: always) keeps the compact
    # uint8 copy. The conversion is per pixel, so either way a batch holds the same floats.
    converted = device.type == "cpu" and images.nbytes * 4 <= CPU_FLOAT_BUDGET
    if converted:
        pixels = _to_unit(pixels, config.polarity)
    return _TrainSet(pixels, converted, targets, draw_weights, loss_weights)


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

    def __init__(self, validation: tuple[Images, np.ndarray, np.ndarray | None], config: FitConfig) -> None:
        images, labels, weights = validation
        # Distributed: rank 0 alone validates and tells the others (see score).
        self.scores = _world(config)[1] == 0
        in_memory = self.scores and keeps_in_memory(images, config)
        self.pixels: torch.Tensor | Images = _place(images, config.device) if in_memory else images
        self.targets = _as_tensor(labels, torch.long, config.device)
        self.weights = None if weights is None else _as_tensor(weights, torch.float32, config.device)
        self.config = config
        self.loss = math.inf
        self.epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def score(self, net: nn.Module, model: nn.Module, stats: dict) -> None:
        """Add ``val_loss``, ``val_accuracy`` and ``best`` to ``stats``; on a new lowest loss,
        keep a copy of ``model``'s weights.

        Distributed, rank 0 validates (``net`` is then the bare model: DDP's forward would wait
        for the other ranks) and broadcasts its figures, so every rank takes the same decisions
        (best epoch, early stop) and ends with the same weights.
        """
        figures = [math.nan, math.nan]
        if self.scores:
            figures = list(
                _validate(
                    net,
                    self.pixels,
                    self.targets,
                    self.weights,
                    batch_size=max(self.config.batch_size, 512),
                    device=self.config.device,
                    polarity=self.config.polarity,
                )
            )
        if self.config.distributed:
            torch.distributed.broadcast_object_list(figures, src=0)
        stats["val_loss"], stats["val_accuracy"] = figures
        stats["best"] = stats["val_loss"] < self.loss
        if stats["best"]:
            self.loss, self.epoch = stats["val_loss"], stats["epoch"]
            self.state = {key: value.detach().clone() for key, value in model.state_dict().items()}

    def should_stop(self, epoch: int) -> bool:
        since_best = epoch - (self.epoch if self.epoch is not None else epoch)
        return self.config.patience is not None and since_best >= self.config.patience


@dataclass(frozen=True)
class _Step:
    """One optimiser step: the batch (indices into the training set), and this process's share
    of it: all of it in one process, a contiguous slice of it under DDP."""

    batch: torch.Tensor
    rows: torch.Tensor
    offset: int  # where rows start in batch
    padding: bool = False  # an empty share stood in for by one row whose loss counts 0


def _steps(order: torch.Tensor, batch_size: int, world: int, rank: int) -> list[_Step]:
    """The epoch's steps: ``order`` in batches of ``batch_size``, each split over ``world`` processes.

    Every process draws the same ``order`` (same seed), so the shares of a batch are disjoint and
    cover it: a distributed run trains on the batches a one-process run trains on (the global
    weighted draw is honoured as it is), at the same number of steps per epoch.
    """
    steps = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        if world == 1:
            steps.append(_Step(batch, batch, 0))
            continue
        shares = batch.tensor_split(world)
        rows, offset = shares[rank], sum(len(share) for share in shares[:rank])
        # A last batch smaller than world leaves a share empty; DDP needs every rank to step.
        steps.append(_Step(batch, rows, offset) if len(rows) else _Step(batch, batch[:1], 0, padding=True))
    return steps


def _step_images(data: _TrainSet, steps: list[_Step], config: FitConfig) -> Iterator[torch.Tensor]:
    """Each step's images, float N x C x H x W in [0, 1] on the device, in step order."""
    device, polarity = config.device, config.polarity
    if data.pixels is None:  # streamed: read by the background reader, in the steps' order
        shares = [step.rows.numpy() for step in steps]
        for batch in _prefetched(data.source, shares, pin=device.type == "cuda"):
            yield _to_unit(batch.to(device, non_blocking=True), polarity)
        return
    for step in steps:
        index = step.rows.to(data.pixels.device)
        if data.converted:
            yield data.pixels[index]
        else:
            yield _to_unit(data.pixels[index].to(device, non_blocking=True), polarity)


def _share_of_batch(step: _Step, data: _TrainSet, w: torch.Tensor | None, world: int) -> torch.Tensor | float:
    """The factor on a share's mean loss that makes DDP's average of the ranks' gradients the
    gradient of the whole batch's (weighted) mean loss: the share's part of the batch's weight
    (or size), times the number of processes; 0 for a padding share."""
    if step.padding:
        return 0.0
    if w is None:
        return len(step.rows) * world / len(step.batch)
    total = data.loss_weights[step.batch.to(w.device)].sum().clamp_min(1e-12)
    return w.sum() * world / total


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
    world, rank = _world(config)
    steps = _steps(epoch_order(n, generator, data.draw_weights), config.batch_size, world, rank)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for step, x in zip(steps, _step_images(data, steps, config), strict=True):
        index = step.rows.to(device)
        if config.augment:
            x = _augment(x, generator, None if world == 1 else (step.offset, len(step.batch)))
        x, y = _standardise(x), data.targets[index]
        w = None if data.loss_weights is None else data.loss_weights[index]
        loss, losses, logits = _batch_loss(net, x, y, w, device.type == "cuda")
        optimiser.step(loss if world == 1 else loss * _share_of_batch(step, data, w, world))
        if not step.padding:
            # Accumulate on the device: .item() per step would sync a GPU every batch.
            loss_sum += losses.detach().sum()
            correct += (logits.argmax(1) == y).sum()
        bar.update()
    if world > 1:  # the epoch's figures over every rank's shares
        totals = torch.stack([loss_sum.double(), correct.double()])
        torch.distributed.all_reduce(totals)
        loss_sum, correct = totals[0], totals[1]
    stats = {"train_loss": loss_sum.item() / n, "train_accuracy": correct.item() / n}
    return stats | {"seconds": time.perf_counter() - started, "images": n}


def fit(
    model: nn.Module,
    images: Images,
    labels: np.ndarray,
    config: FitConfig,
    *,
    sample_weights: np.ndarray | None = None,
    validation: tuple[Images, np.ndarray, np.ndarray | None] | None = None,
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

    ``images`` (and the validation images) are copied onto the device whole or read batch by
    batch by a background reader, as ``config.data_on_device`` says (:func:`keeps_in_memory`);
    either way each step sees the same floats.

    With ``config.distributed`` this process is one rank of a process group that trains the
    model with DDP: every rank draws the same epoch order and augmentation draws, trains on its
    slice of each batch (``batch_size`` is the batch of all ranks together, so the steps and the
    one-cycle schedule are those of one process), and the gradients are averaged; rank 0
    validates and broadcasts the figures, so every rank ends with the same weights and history.

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
    bar = _progress_bar(config.epochs * steps, progress if _world(config)[1] == 0 else None)
    for epoch in range(1, config.epochs + 1):
        stats = {"epoch": epoch} | _epoch(net, data, optimiser, generator, config, bar)
        if checks is not None:
            checks.score(model if config.distributed else net, model, stats)
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
    model: nn.Module, images: Images, *, batch_size: int, device: torch.device, polarity: str
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N x K) and penultimate embeddings (N x D), float32, eval mode.

    ``polarity``: what the model was trained with (``FitConfig.polarity``; a checkpoint's meta).
    The images are read batch by batch (a background reader keeps the next ones ready), so a
    memory-map or an :class:`curate.dataset.ImageRows` is never copied whole.
    """
    check_mode(polarity)
    model.to(device).eval()
    cuda = device.type == "cuda"
    probs, embeddings = [], []
    for batch in _batches(images, len(images), batch_size, pin=cuda):
        x = _standardise(_to_unit(batch.to(device, non_blocking=True), polarity))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            features = model.embed(x)
            logits = model.head(features)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        embeddings.append(features.float().cpu())
    if not probs:  # no images: keep the shapes' widths so callers can still concatenate
        width = model.head.in_features
        return np.zeros((0, model.head.out_features), np.float32), np.zeros((0, width), np.float32)
    return torch.cat(probs).numpy(), torch.cat(embeddings).numpy()

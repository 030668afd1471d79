"""Training a network: :func:`fit`, the loop the folds and train stages share.

AdamW with a one-cycle schedule, seeded batch order and augmentation draws (on the CPU the same
inputs give the same bytes), a weighted loss or a weighted sampler, validation with early
stopping, bf16 autocast on CUDA, optional ``torch.compile``, and DDP when the stage runs under
torchrun (the batch split over the ranks: :mod:`curate.learning.distributed`). The images come from
:mod:`curate.learning.feeding`: copied onto the device whole or read batch by batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curate.data.polarity import check_mode
from curate.learning import distributed, feeding
from curate.progress import Progress, progress_bar

WEIGHT_DECAY = 5e-4
# The progress bar's figures: its label -> the stats key.
POSTFIX = {"loss": "train_loss", "val_loss": "val_loss"}
# data_on_device auto on a CPU: the set is converted to float once when that copy fits in this
# many bytes (every step then skips the uint8 -> float conversion), else read batch by batch.
CPU_FLOAT_BUDGET = 2**31


@dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` trains: AdamW with a one-cycle LR peaking at ``lr``, ``epochs`` passes
    of ``batch_size``, seeded by ``seed`` (the batch order and the augmentation draws).

    ``weighting`` says how sample weights act: ``loss`` (weighted cross-entropy) or ``sampler``
    (draws proportional to weight). ``augment``: random shift/rotate/scale per image per step.
    ``patience``: with validation, stop once that many epochs bring no lower validation loss.
    ``compile``: run the model through ``torch.compile``. ``polarity``: ``image.normalize_polarity``
    (``auto`` inverts single-channel images on light paper, ``off`` keeps them as stored);
    :func:`curate.learning.inference.predict` must then be given the same. ``data_on_device``: copy the
    whole set onto the device (``always``), read it batch by batch (``never``), or whichever fits
    (``auto``, see :func:`keeps_in_memory`); the results are the same. ``distributed``: this process is one of
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


def fit(
    model: nn.Module,
    images: feeding.Images,
    labels: np.ndarray,
    config: FitConfig,
    *,
    sample_weights: np.ndarray | None = None,
    validation: tuple[feeding.Images, np.ndarray, np.ndarray | None] | None = None,
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

    ``images`` (and the validation images) are copied onto the device whole or read batch by batch
    (:func:`keeps_in_memory`); either way each step sees the same floats.

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
    bar = progress_bar(config.epochs * steps, progress if _world(config)[1] == 0 else None)
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
    steps = distributed.steps(epoch_order(n, generator, data.draw_weights), config.batch_size, world, rank)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for step, x in zip(steps, _step_images(data, steps, config), strict=True):
        index = step.rows.to(device)
        if config.augment:
            x = feeding.augment(x, generator, None if world == 1 else (step.offset, len(step.batch)))
        x, y = feeding.standardise(x), data.targets[index]
        w = None if data.loss_weights is None else data.loss_weights[index]
        loss, losses, logits = _batch_loss(net, x, y, w, device.type == "cuda")
        optimiser.step(
            loss if world == 1 else loss * distributed.share_of_batch(step, data.loss_weights, w, world)
        )
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


def _step_images(data: _TrainSet, steps: list[distributed.Step], config: FitConfig) -> Iterator[torch.Tensor]:
    """Each step's images, float N x C x H x W in [0, 1] on the device, in step order."""
    device, polarity = config.device, config.polarity
    if data.pixels is None:  # streamed: read by the background reader, in the steps' order
        shares = [step.rows.numpy() for step in steps]
        for batch in feeding.prefetched(data.source, shares, pin=device.type == "cuda"):
            yield feeding.to_unit(batch.to(device, non_blocking=True), polarity)
        return
    for step in steps:
        index = step.rows.to(data.pixels.device)
        if data.converted:
            yield data.pixels[index]
        else:
            yield feeding.to_unit(data.pixels[index].to(device, non_blocking=True), polarity)


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
    source: feeding.Images | None = None  # streamed: the images, read batch by batch

    @property
    def n(self) -> int:
        return len(self.targets)


def _as_tensor(values: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # np.array copies: pandas hands out read-only views, which torch warns about.
    return torch.as_tensor(np.array(values), dtype=dtype, device=device)


def _train_set(
    images: feeding.Images, labels: np.ndarray, sample_weights: np.ndarray | None, config: FitConfig
) -> _TrainSet:
    device = config.device
    targets = _as_tensor(labels, torch.long, device)
    weights = None if sample_weights is None else _as_tensor(sample_weights, torch.float32, device)
    draw_weights = weights.cpu() if weights is not None and config.weighting == "sampler" else None
    loss_weights = weights if config.weighting == "loss" else None
    if not keeps_in_memory(images, config):
        return _TrainSet(None, False, targets, draw_weights, loss_weights, source=images)
    pixels = feeding.place(images, device)
    # On a CPU, converting to float once (4x the bytes) spares every step the uint8 -> float
    # conversion; a GPU (or a set over 2 GB as floats, data_on_device: always) keeps the compact
    # uint8 copy. The conversion is per pixel, so either way a batch holds the same floats.
    converted = device.type == "cpu" and images.nbytes * 4 <= CPU_FLOAT_BUDGET
    if converted:
        pixels = feeding.to_unit(pixels, config.polarity)
    return _TrainSet(pixels, converted, targets, draw_weights, loss_weights)


def keeps_in_memory(images: feeding.Images, config: FitConfig) -> bool:
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


class _Optimiser:
    """AdamW and its one-cycle LR schedule, stepped together once per batch."""

    def __init__(self, model: nn.Module, config: FitConfig, steps_per_epoch: int) -> None:
        self.adamw = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=WEIGHT_DECAY)
        # One-cycle: a short warm-up then annealing to ~0 lets a few epochs converge, which is
        # what the folds stage's budget (K models) allows. OneCycleLR divides by its phase
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
        self, validation: tuple[feeding.Images, np.ndarray, np.ndarray | None], config: FitConfig
    ) -> None:
        images, labels, weights = validation
        # Distributed: rank 0 alone validates and tells the others (see score).
        self.scores = _world(config)[1] == 0
        in_memory = self.scores and keeps_in_memory(images, config)
        self.pixels: torch.Tensor | feeding.Images = (
            feeding.place(images, config.device) if in_memory else images
        )
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


@torch.no_grad()
def _validate(
    net: nn.Module,
    pixels: torch.Tensor | feeding.Images,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    batch_size: int,
    device: torch.device,
    polarity: str,
) -> tuple[float, float]:
    """(loss, accuracy) on held-out data, weighted by ``weights`` when given, in eval mode.

    ``pixels``: the uint8 images placed by :func:`curate.learning.feeding.place`, or a source to read batch
    by batch.
    """
    net.eval()
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), device=device)
    batches = feeding.batches(pixels, len(targets), batch_size, pin=device.type == "cuda")
    for start, batch in zip(range(0, len(targets), batch_size), batches, strict=True):
        x = feeding.standardise(feeding.to_unit(batch.to(device, non_blocking=True), polarity))
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


def _placed(model: nn.Module, config: FitConfig) -> nn.Module:
    """``model`` moved to the device in channels_last; what runs it (wrapped in DDP when
    distributed, compiled when asked)."""
    model.to(config.device).to(memory_format=torch.channels_last)
    net = distributed.data_parallel(model, config.device) if config.distributed else model
    # torch.compile traces on the first batch (seconds to minutes): worth it on a GPU for
    # long runs, rarely on a CPU. The compiled module shares the model's parameters.
    return torch.compile(net) if config.compile else net


def _world(config: FitConfig) -> tuple[int, int]:
    """(processes, this one's rank) training the model: (1, 0) unless ``config.distributed``."""
    if not config.distributed:
        return 1, 0
    return torch.distributed.get_world_size(), torch.distributed.get_rank()

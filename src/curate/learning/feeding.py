"""What the networks are fed: uint8 images from an array or a store, turned into the standardised
float batches every model takes, augmented on the device, read ahead by a background thread.

On a GPU the pixels stay uint8 until a batch is on the device (a quarter of the float bytes over
the bus); the conversion, the polarity rule and the augmentation run there.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from curate.data.polarity import above_half
from curate.data.rows import read_rows

# Augmentation ranges, drawn per image per step: small enough that a digit stays the digit
# it was, large enough that the K-fold models stop memorising pixel positions (the noisy
# labels are what they would memorise next).
MAX_SHIFT = 2.0  # pixels at SHIFT_REFERENCE_SIZE, in proportion at other sizes (4.6 at 64 x 64)
SHIFT_REFERENCE_SIZE = 28  # the demo's side, where MAX_SHIFT was tuned
MAX_ROTATE = 10.0  # degrees
MAX_SCALE = 0.10  # +-10 %
PREFETCH = 2  # batches the background reader keeps ready ahead of the one in use


class Images(Protocol):
    """uint8 ``N x H x W x C`` images as training and prediction take them: a numpy array
    (a memory-map too), or a lazy source such as :class:`curate.data.image_rows.ImageRows`, which reads the
    rows asked of its ``read(index)`` and materialises under ``np.asarray``."""

    shape: tuple[int, ...]
    nbytes: int

    def __len__(self) -> int: ...

    def __getitem__(self, key: Any) -> Any: ...


def light_background_tensor(batch: torch.Tensor) -> torch.Tensor:
    """:func:`curate.data.polarity.light_background` on a uint8 N x H x W x C tensor: bool (N,).

    The same rule in the same integer arithmetic, so the two agree on every image.
    """
    n, _, _, channels = batch.shape
    if channels != 1 or n == 0:
        return torch.zeros(n, dtype=torch.bool, device=batch.device)
    plane = batch[..., 0]
    border = torch.cat([plane[:, 0], plane[:, -1], plane[:, :, 0], plane[:, :, -1]], dim=1)
    return above_half(border.sum(dim=1, dtype=torch.int64), border.shape[1])


def to_unit(batch: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [0, 1]; with ``mode`` ``auto``, the
    single-channel images on light paper inverted (see :mod:`curate.data.polarity`).

    In the measurements on the demo, the sklearn group's flipped labels were mostly missed
    without the inversion: its few dark-on-light digits were learnt from their own samples only.
    """
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    if mode == "auto" and x.shape[1] == 1:
        light = light_background_tensor(batch)
        x = torch.where(light.view(-1, 1, 1, 1), 1.0 - x, x)
    return x


def standardise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], channels_last: what every network is fed."""
    return x.sub(0.5).div_(0.5).contiguous(memory_format=torch.channels_last)


def to_tensor(images: np.ndarray, device: torch.device | str, *, polarity: str) -> torch.Tensor:
    """uint8 N x H x W x C numpy -> the float N x C x H x W tensor the models expect.

    ``polarity``: ``image.normalize_polarity`` (``auto`` or ``off``), as the model was trained.
    """
    return standardise(to_unit(from_numpy(images, device), polarity))


def from_numpy(images: Images, device: torch.device | str) -> torch.Tensor:
    """The uint8 images as a tensor on ``device``."""
    # np.array copies, so a read-only memmap never reaches torch.from_numpy (which warns).
    return torch.from_numpy(np.array(images, dtype=np.uint8)).to(device)


def augment(
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


def place(images: Images, device: torch.device) -> torch.Tensor:
    """The uint8 images on ``device`` when they fit in half its free memory, else in pinned host memory.

    uint8 is a quarter of float32, so the demo (10k x 28 x 28) takes 8 MB of a GPU: batches
    are then gathered on the GPU with no host round trip per step.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes > free // 2:
            return from_numpy(images, "cpu").pin_memory()
    return from_numpy(images, device)


def _read(images: Images, index: np.ndarray | slice) -> np.ndarray:
    """Rows ``index`` of ``images``, in that order, as a new uint8 array; a lazy source reads its
    own way (``read``)."""
    if isinstance(index, slice):
        return np.array(images[index], dtype=np.uint8)
    read = getattr(images, "read", None)
    return read(index) if read is not None else read_rows(images, index)


def prefetched(images: Images, batches: Sequence[np.ndarray | slice], pin: bool) -> Iterator[torch.Tensor]:
    """The ``batches`` of ``images`` as uint8 CPU tensors, read by a background thread up to
    :data:`PREFETCH` batches ahead, so the device does not wait on the disk. ``pin``: in pinned
    memory, so the copy to a GPU runs asynchronously."""

    def load(index: np.ndarray | slice) -> torch.Tensor:
        batch = torch.from_numpy(_read(images, index))
        return batch.pin_memory() if pin else batch

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate-reader") as reader:
        pending: deque[Future[torch.Tensor]] = deque()
        for index in batches:
            pending.append(reader.submit(load, index))
            if len(pending) > PREFETCH:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def batches(pixels: torch.Tensor | Images, n: int, batch_size: int, pin: bool) -> Iterator[torch.Tensor]:
    """Consecutive uint8 batches of ``n`` images: slices of a placed tensor, or read from a source
    by :func:`prefetched`."""
    starts = range(0, n, batch_size)
    if isinstance(pixels, torch.Tensor):
        return (pixels[start : start + batch_size] for start in starts)
    return prefetched(pixels, [slice(start, start + batch_size) for start in starts], pin)

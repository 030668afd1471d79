"""Ink polarity of single-channel images: which ones ``image.normalize_polarity: auto`` inverts.

Grayscale collections mix polarities (the demo's sklearn group is dark ink on light paper,
MNIST the reverse). A CNN does not transfer between the two, so a small group in the other
polarity is learnt from its few own samples only. With ``auto``, every single-channel image
whose border is brighter than mid-grey is inverted before the models see it, which puts
every image in one polarity; ``off`` keeps the images as stored. Colour images are never
inverted. ``auto`` is the default because it helps on the demo, overall and most for the worst
group (``benchmarks/efficacy.py``; the figures are in benchmarks/README.md).

This module is torch-free (the ingest report counts the images ``auto`` inverts without
loading torch); :func:`curate.learning.feeding.light_background_tensor` is the same rule on tensors,
and a test checks that the two agree.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

MODES = ("auto", "off")
# Integer border sums, numpy here or torch in curate.learning.feeding: the comparison is the same.
Sums = TypeVar("Sums")


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`MODES`; a ``ValueError`` naming the choices otherwise."""
    if mode not in MODES:
        raise ValueError(f"unknown polarity mode {mode!r} (expected 'auto' or 'off')")
    return mode


def light_background(images: np.ndarray) -> np.ndarray:
    """Which images are light paper: bool (N,) for uint8 N x H x W x C.

    True where C == 1 and the mean of the border pixels (the first and last row and column,
    corners counted twice, as the tensor version does) is above half of full scale (127.5).
    All False for C == 3. Only the border is read, so a memory-mapped array stays on disk.
    """
    if images.ndim != 4:
        raise ValueError(f"expected N x H x W x C images, got shape {images.shape}")
    n, channels = images.shape[0], images.shape[3]
    if channels != 1 or n == 0:
        return np.zeros(n, dtype=bool)
    plane = images[..., 0]
    border = np.concatenate([plane[:, 0], plane[:, -1], plane[:, :, 0], plane[:, :, -1]], axis=1)
    return above_half(border.sum(axis=1, dtype=np.int64), border.shape[1])


def above_half(border_sums: Sums, count: int) -> Sums:
    """mean > 127.5 in exact integer arithmetic (sum * 2 > 255 * count): a float mean could
    round either way on an image right at the threshold, and numpy and torch must agree."""
    return border_sums * 2 > 255 * count

"""Image conversions shared by ingest (and later stages that show pictures)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def conform(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """Resize to ``size x size`` and convert to ``channels`` (1: L, 3: RGB); uint8 H x W x C.

    Transparent pixels are composited on white first, so a PNG with alpha
    does not turn black when its alpha channel is dropped.
    """
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if channels == 1 else array


def to_pil(image: np.ndarray) -> Image.Image:
    """H x W x C uint8 (C = 1 or 3) to a PIL image."""
    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)

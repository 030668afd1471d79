"""Image conversions shared by ingest (and later stages that show pictures)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Integer modes with more than 8 bits per pixel: 16-bit PNG and TIFF open as I;16 (or I;16B);
# some decoders hand them over as I (32-bit signed) with the same 0..65535 values.
WIDE_INTEGER_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
FLOAT_MODES = frozenset({"F"})
UINT16_MAX = 65535


def conform(image: Image.Image, size: int, channels: int, rescale_16bit: str = "dtype_range") -> np.ndarray:
    """Resize to ``size x size`` and convert to ``channels`` (1: L, 3: RGB); uint8 H x W x C.

    Images with more than 8 bits per pixel go to 8 bits first (:func:`to_8bit`), because
    Pillow's own ``convert("L")`` clips them at 255. Transparent pixels are composited on
    white, so a PNG with alpha does not turn black when its alpha channel is dropped.
    """
    if image.mode in WIDE_INTEGER_MODES | FLOAT_MODES:
        image = to_8bit(image, rescale_16bit)
    elif image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if channels == 1 else array


def to_8bit(image: Image.Image, rescale_16bit: str) -> Image.Image:
    """A single-channel 16-bit, 32-bit integer or float image as an 8-bit ``L`` image.

    Integers: ``dtype_range`` maps 0..65535 onto 0..255 (value / 257, rounded), so a pixel
    keeps its brightness whatever else is in the image; ``per_image`` stretches the image's
    own min..max onto 0..255 (a constant image becomes 0). Integer values outside 0..65535
    have no 16-bit meaning and raise ``ValueError`` (the file is then unreadable).
    Floats (mode ``F``) have no dtype range: values within 0..1 are taken as intensities
    and scaled by 255 under ``dtype_range``; any other range, or ``per_image``, is
    stretched from the image's min..max. NaN or infinite pixels raise ``ValueError``.
    """
    pixels = np.asarray(image).astype(np.float64)
    if not np.isfinite(pixels).all():
        raise ValueError("pixels that are NaN or infinite")
    low, high = float(pixels.min()), float(pixels.max())
    if image.mode in WIDE_INTEGER_MODES and (low < 0 or high > UINT16_MAX):
        raise ValueError(f"{image.mode} pixels from {low:g} to {high:g}, outside the 16-bit range 0..65535")
    if rescale_16bit == "dtype_range" and image.mode in WIDE_INTEGER_MODES:
        scaled = pixels / 257
    elif rescale_16bit == "dtype_range" and low >= 0 and high <= 1:
        scaled = pixels * 255
    elif high > low:
        scaled = (pixels - low) * (255 / (high - low))
    else:
        scaled = np.zeros_like(pixels)
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def to_pil(image: np.ndarray) -> Image.Image:
    """H x W x C uint8 (C = 1 or 3) to a PIL image."""
    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)

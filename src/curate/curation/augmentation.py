"""Per-sample random augmentation with torchvision v2 transforms, batched where it matters.

torchvision v2 transforms draw ONE random parameter set per call, so calling one
on a batch moves every image the same way. Per-sample randomness therefore means
one call per image, which costs Python overhead per image. This module keeps v2's
semantics but removes that overhead for the geometric transforms that dominate
typical pipelines:

* ``RandomAffine`` and ``RandomRotation``: per-sample parameters drawn from the
  same distributions as v2's ``make_params`` (angle, integer-rounded translation,
  scale, shear), turned into v2's own inverse matrix, and applied to the whole
  batch at once with one ``grid_sample`` (v2's ``affine_image`` does the same for
  one image). With the same parameters the output is the same as
  ``v2.functional.affine`` (tested).
* ``RandomResizedCrop`` (bilinear): v2's crop sampler, vectorised, and a bilinear
  resize of each crop through the same ``grid_sample`` (equal to v2 up to 1 grey
  level of rounding: v2's uint8 resize computes in fixed point);
* ``RandomErasing`` with a numeric ``value``: v2's 10-attempt rectangle sampler,
  vectorised, applied as a mask.

Every other transform runs per sample through v2 itself, with the CPU random
generator seeded per sample. Either way each new image's randomness comes from
its own 64-bit key (hashed from the seed, its parent's id and its copy index),
never from its position in a batch: the same image gets the same augmentation
whatever the batch size, device or the rest of the table.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

# Vectorised splitmix64: numpy uint64 arithmetic wraps modulo 2**64, as the mixer intends.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@cache
def transform_classes() -> dict[str, type[v2.Transform]]:
    """The public ``torchvision.transforms.v2`` classes that are transforms, by name."""
    return {
        name: obj
        for name, obj in vars(v2).items()
        if not name.startswith("_")
        and inspect.isclass(obj)
        and issubclass(obj, v2.Transform)
        and obj is not v2.Transform
    }


# Stands in for image.size when params are validated on their own (the section knows no image).
_VALIDATION_SIZE = 32


def effective_args(name: str, args: dict, image_size: int | None) -> dict:
    """``args`` with ``size`` set to ``image_size`` when the transform takes a size and none is given.

    So a crop or resize follows ``image.size`` instead of a number that must be kept in step by hand.
    """
    takes_size = "size" in inspect.signature(transform_classes()[name]).parameters
    if not takes_size or "size" in args:
        return dict(args)
    return {**args, "size": image_size if image_size is not None else _VALIDATION_SIZE}


def build_transform(name: str, args: dict, image_size: int | None) -> v2.Transform:
    """``RandomAffine``, ``{"degrees": 10}`` -> the v2 transform (raises what v2 raises)."""
    return transform_classes()[name](**effective_args(name, args, image_size))


def check_preserves_image(transform: v2.Transform, shape: tuple[int, int, int]) -> str | None:
    """Why ``transform`` cannot augment ``C x H x W`` uint8 images (None when it can)."""
    dummy = torch.full(shape, 128, dtype=torch.uint8)
    dummy[:, shape[1] // 4 : shape[1] // 2] = 0
    try:
        with torch.random.fork_rng(devices=[]):
            out = transform(dummy)
    except Exception as exc:  # noqa: BLE001  (any failure means "unusable here"; say which)
        return f"fails on a {'x'.join(map(str, shape))} uint8 image: {exc}"
    if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or tuple(out.shape) != shape:
        got = f"{out.dtype} {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        return f"must keep a uint8 {'x'.join(map(str, shape))} image as it is, but returns {got}"
    return None


def sample_keys(seed: int, parent_ids: Iterable[str], copy_index: Iterable[int]) -> np.ndarray:
    """One 64-bit random key per new image, from (seed, parent id, copy index) only."""
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{seed}/{pid}/{k}".encode(), digest_size=8).digest(), "little")
            for pid, k in zip(parent_ids, copy_index, strict=True)
        ],
        dtype=np.uint64,
    )


def _splitmix(x: np.ndarray) -> np.ndarray:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def uniforms(keys: np.ndarray, stream: int, count: int) -> np.ndarray:
    """``len(keys) x count`` uniforms in [0, 1): a counter-based stream per key and step."""
    with np.errstate(over="ignore"):
        base = _splitmix(keys ^ _splitmix(np.array([stream], dtype=np.uint64)))
        counters = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
        bits = _splitmix(base[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


# --- batched kernels: (transform, uint8 N x C x H x W, uniforms N x k) -> uint8 N x C x H x W ---------


def _affine_params(t: v2.Transform, u: np.ndarray, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Per-sample (angle, tx, ty, scale, shear_x, shear_y) as v2's ``make_params`` draws them."""
    n = len(u)
    angle = t.degrees[0] + u[:, 0] * (t.degrees[1] - t.degrees[0])
    zeros, ones = np.zeros(n), np.ones(n)
    translate = getattr(t, "translate", None)
    if translate is not None:
        max_dx, max_dy = float(translate[0] * width), float(translate[1] * height)
        # v2 rounds translations to whole pixels (Python round: half to even, as np.round).
        tx = np.round(-max_dx + u[:, 1] * 2 * max_dx)
        ty = np.round(-max_dy + u[:, 2] * 2 * max_dy)
    else:
        tx = ty = zeros
    scale_range = getattr(t, "scale", None)
    scale = scale_range[0] + u[:, 3] * (scale_range[1] - scale_range[0]) if scale_range else ones
    shear = getattr(t, "shear", None)
    shear_x = shear[0] + u[:, 4] * (shear[1] - shear[0]) if shear else zeros
    shear_y = shear[2] + u[:, 5] * (shear[3] - shear[2]) if shear and len(shear) == 4 else zeros
    return angle, tx, ty, scale, shear_x, shear_y


def affine_matrices(angle, tx, ty, scale, shear_x, shear_y, center=(0.0, 0.0)) -> np.ndarray:
    """v2's ``_get_inverse_affine_matrix``, vectorised: N x 2 x 3 (output pixel -> input pixel).

    Coordinates are relative to the image centre; ``center`` offsets the rotation centre.
    """
    rot, sx, sy = np.radians(angle), np.radians(shear_x), np.radians(shear_y)
    cx, cy = center
    a = np.cos(rot - sy) / np.cos(sy)
    b = -np.cos(rot - sy) * np.tan(sx) / np.cos(sy) - np.sin(rot)
    c = np.sin(rot - sy) / np.cos(sy)
    d = -np.sin(rot - sy) * np.tan(sx) / np.cos(sy) + np.cos(rot)
    m = np.stack([d, -b, np.zeros_like(a), -c, a, np.zeros_like(a)], axis=1) / scale[:, None]
    m[:, 2] += m[:, 0] * (-cx - tx) + m[:, 1] * (-cy - ty) + cx
    m[:, 5] += m[:, 3] * (-cx - tx) + m[:, 4] * (-cy - ty) + cy
    return m.reshape(-1, 2, 3)


def warp(images: torch.Tensor, matrices: np.ndarray, mode: str, fill: Sequence[float]) -> torch.Tensor:
    """Apply one inverse affine matrix per image, exactly as v2's ``affine_image`` does for one."""
    n, channels, height, width = images.shape
    device = images.device
    theta = torch.as_tensor(matrices, dtype=torch.float32, device=device)
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=device)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=device)
    base = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width)], dim=-1)
    base = torch.cat([base, torch.ones(height, width, 1, device=device)], dim=-1).view(1, -1, 3)
    scale = torch.tensor([0.5 * width, 0.5 * height], device=device)
    grid = base.expand(n, -1, -1).bmm(theta.transpose(1, 2) / scale).view(n, height, width, 2)
    # A ones channel rides along so pixels sampled from outside the image can take the fill.
    floats = torch.cat([images.float(), torch.ones(n, 1, height, width, device=device)], dim=1)
    out = F.grid_sample(floats, grid, mode=mode, padding_mode="zeros", align_corners=False)
    out, mask = out[:, :-1], out[:, -1:].expand(-1, channels, -1, -1)
    fill_img = torch.tensor(list(fill), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    if mode == "nearest":
        out = torch.where(mask < 0.5, fill_img.expand_as(out), out)
    else:
        out = (out - fill_img) * mask + fill_img
    return out.round_().to(torch.uint8)


def _mode_of(t: v2.Transform) -> str | None:
    """``nearest`` or ``bilinear`` (what ``grid_sample`` can do), else None."""
    mode = t.interpolation
    mode = mode.value if isinstance(mode, v2.InterpolationMode) else mode
    return mode if mode in ("nearest", "bilinear") else None


def _fill_of(t: v2.Transform) -> list[float] | None:
    """The fill for plain images, or None when it is not a plain number or sequence."""
    fill = t.fill
    if isinstance(fill, int | float):
        return [float(fill)]
    if isinstance(fill, list | tuple) and all(isinstance(f, int | float) for f in fill):
        return [float(f) for f in fill]
    return None


def _affine_kernel(t: v2.Transform, x: torch.Tensor, u: np.ndarray) -> torch.Tensor:
    height, width = x.shape[-2:]
    angle, tx, ty, scale, shear_x, shear_y = _affine_params(t, u, height, width)
    center = (0.0, 0.0) if t.center is None else (t.center[0] - width * 0.5, t.center[1] - height * 0.5)
    matrices = affine_matrices(angle, tx, ty, scale, shear_x, shear_y, center)
    return warp(x, matrices, _mode_of(t), _fill_of(t))


def _erasing_kernel(t: v2.RandomErasing, x: torch.Tensor, u: np.ndarray) -> torch.Tensor:
    """v2's sampler: up to 10 tries of (area, log-ratio) for a box that fits; no box, no erase."""
    n, _, height, width = x.shape
    tries = 10
    area = height * width * (t.scale[0] + u[:, 1 : 1 + tries] * (t.scale[1] - t.scale[0]))
    log_lo, log_hi = math.log(t.ratio[0]), math.log(t.ratio[1])
    ratio = np.exp(log_lo + u[:, 1 + tries : 1 + 2 * tries] * (log_hi - log_lo))
    h = np.round(np.sqrt(area * ratio)).astype(int)
    w = np.round(np.sqrt(area / ratio)).astype(int)
    fits = (h < height) & (w < width)
    first = fits.argmax(axis=1)
    rows = np.arange(n)
    h, w = h[rows, first], w[rows, first]
    top = np.floor(u[:, -2] * (height - h + 1)).astype(int)
    left = np.floor(u[:, -1] * (width - w + 1)).astype(int)
    erase = (u[:, 0] < t.p) & fits.any(axis=1)
    ys, xs = np.arange(height), np.arange(width)
    inside = (
        erase[:, None, None]
        & ((ys[None, :] >= top[:, None]) & (ys[None, :] < (top + h)[:, None]))[:, :, None]
        & ((xs[None, :] >= left[:, None]) & (xs[None, :] < (left + w)[:, None]))[:, None, :]
    )
    mask = torch.as_tensor(inside, device=x.device)[:, None]
    value = torch.tensor(t.value, dtype=torch.float32, device=x.device).to(x.dtype).view(1, -1, 1, 1)
    return torch.where(mask, value.expand_as(x), x)


def _resized_crop_kernel(t: v2.RandomResizedCrop, x: torch.Tensor, u: np.ndarray) -> torch.Tensor:
    """v2's crop sampler (10 tries, then a central crop), then a bilinear resize of the crop.

    The crop is never larger than the image and the output is the image size, so the
    resize only ever enlarges, where antialiasing changes nothing.
    """
    n, _, height, width = x.shape
    tries = 10
    area = height * width * (t.scale[0] + u[:, :tries] * (t.scale[1] - t.scale[0]))
    log_lo, log_hi = math.log(t.ratio[0]), math.log(t.ratio[1])
    ratio = np.exp(log_lo + u[:, tries : 2 * tries] * (log_hi - log_lo))
    w = np.round(np.sqrt(area * ratio)).astype(int)
    h = np.round(np.sqrt(area / ratio)).astype(int)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    rows, first = np.arange(n), fits.argmax(axis=1)
    w, h = w[rows, first], h[rows, first]
    top = np.floor(u[:, -2] * (height - h + 1)).astype(int)
    left = np.floor(u[:, -1] * (width - w + 1)).astype(int)
    # No fit in 10 tries: v2's central crop, clipped to the ratio range.
    in_ratio = width / height
    fallback_w = width if in_ratio <= max(t.ratio) else int(round(height * max(t.ratio)))
    fallback_h = int(round(width / min(t.ratio))) if in_ratio < min(t.ratio) else height
    missed = ~fits.any(axis=1)
    w[missed], h[missed] = fallback_w, fallback_h
    top[missed], left[missed] = (height - fallback_h) // 2, (width - fallback_w) // 2
    # Bilinear resize (align_corners=False) of each crop: source pixel of each output pixel,
    # clamped to the crop as ``interpolate`` clamps to its input.
    xs = left[:, None] + (np.arange(width)[None, :] + 0.5) * (w / width)[:, None] - 0.5
    ys = top[:, None] + (np.arange(height)[None, :] + 0.5) * (h / height)[:, None] - 0.5
    xs = np.clip(xs, left[:, None], (left + w - 1)[:, None])
    ys = np.clip(ys, top[:, None], (top + h - 1)[:, None])
    gx = torch.as_tensor((xs + 0.5) / width * 2 - 1, dtype=torch.float32, device=x.device)
    gy = torch.as_tensor((ys + 0.5) / height * 2 - 1, dtype=torch.float32, device=x.device)
    grid = torch.stack([gx[:, None, :].expand(n, height, width), gy[:, :, None].expand(n, height, width)], -1)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().to(torch.uint8)


def batched_kernel(t: v2.Transform) -> tuple[Callable, int] | None:
    """The batched kernel for ``t`` and how many uniforms it takes per sample, or None."""
    affine = isinstance(t, v2.RandomAffine | v2.RandomRotation) and not getattr(t, "expand", False)
    if affine and _mode_of(t) is not None and _fill_of(t) is not None:
        return _affine_kernel, 6
    if isinstance(t, v2.RandomResizedCrop) and _mode_of(t) == "bilinear":
        return _resized_crop_kernel, 22
    if isinstance(t, v2.RandomErasing) and t.value is not None:
        return _erasing_kernel, 3 + 20
    return None


def apply_pipeline(
    images: torch.Tensor, keys: np.ndarray, transforms: Sequence[v2.Transform]
) -> torch.Tensor:
    """Augment uint8 ``N x C x H x W`` images, image ``i`` with the randomness of ``keys[i]``."""
    x = images
    for step, t in enumerate(transforms):
        kernel = batched_kernel(t)
        if kernel is not None:
            fn, count = kernel
            x = fn(t, x, uniforms(keys, step, count))
            continue
        # Per-sample v2 call, the general path: seed the CPU generator per image (not the
        # global torch.manual_seed, which also reseeds CUDA and costs ~0.2 ms a call).
        # One intra-op thread: on one small image, waking a thread pool costs more than the
        # work (measured: 2 threads on 2 busy cores ran RandomAffine per image ~25x slower).
        seeds = _splitmix(keys ^ np.uint64(step + 1)) >> np.uint64(1)
        cpu, threads = x.cpu(), torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                for i, s in enumerate(seeds):
                    torch.default_generator.manual_seed(int(s))
                    cpu[i] = t(cpu[i])
        finally:
            torch.set_num_threads(threads)
        x = cpu.to(x.device)
    return x


def augment(
    images: np.ndarray,
    keys: np.ndarray,
    transforms: Sequence[v2.Transform],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 4096,
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Augment uint8 ``N x H x W x C`` images (numpy in, numpy out), in batches on ``device``."""
    out = np.empty_like(images)
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        x = chunk.to(device).permute(0, 3, 1, 2).contiguous()
        y = apply_pipeline(x, keys[start : start + batch_size], transforms)
        out[start : start + len(chunk)] = y.permute(0, 2, 3, 1).cpu().numpy()
        if progress is not None:
            progress(len(chunk))
    return out

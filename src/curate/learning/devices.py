"""Where training and prediction run: the device a param asks for, and what computed a stage's floats."""

from __future__ import annotations

import torch

from curate.errors import CurateError


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
